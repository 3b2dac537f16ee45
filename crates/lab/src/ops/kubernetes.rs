//! The `weft lab` operations that write, for a lab whose control plane is
//! Kubernetes: the objects go to its API server (server-side apply, as
//! `kubectl apply --server-side`; deletions as `kubectl delete`), and the
//! real controllers, scheduler and the lab's kubelets do the rest. To be
//! used like the embedded mode, `apply` and `delete` wait for what they
//! started: the pods running (or gone), as the embedded mode does them
//! synchronously.
//!
//! Also the Kubernetes part of `up`: the control plane, weft's install
//! manifest, the agents' credentials.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, NamespaceResourceScope};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::Serialize;
use weft_policy::api::ClusterNetworkPolicy;

use super::cluster::Cluster;
use super::{Binaries, Deletions, Lab};
use crate::layout::{LabState, Layout, SubnetStore};
use crate::manifest::Resource;
use crate::objects::key;
use crate::report::{Event, Outcome, Report};
use crate::{flannel, install, kube_control_plane, node_kubelet};

/// The field manager of the lab's writes.
const MANAGER: &str = "weft-lab";
/// How long `apply` waits for a pod to run, `delete` for one to go.
const POD_WAIT: Duration = Duration::from_secs(90);
/// Bounds the API server's start (2.6–5.6 s measured on 2 cores).
const API_READY_WITHIN: Duration = Duration::from_secs(60);

fn api(lab: &Lab) -> Result<(&tokio::runtime::Runtime, &Client)> {
    match &lab.cluster {
        Cluster::Api { runtime, client } => Ok((runtime, client)),
        Cluster::Store(_) => bail!("lab {} has the embedded control plane", lab.state.name),
    }
}

/// Once the API server is ready: the CRDs, weft's install manifest, the
/// agents' token, then one agent per node (their kubelets already run).
/// `started` is when the control plane was started, for the report of how
/// long the API server took.
pub(super) fn bootstrap(
    layout: &Layout,
    state: &mut LabState,
    bins: &Binaries,
    started: Instant,
    report: Report<'_>,
) -> Result<()> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        kube_control_plane::wait_ready(layout, API_READY_WITHIN).await?;
        report(Event::ApiServerReady {
            seconds: started.elapsed().as_secs_f64(),
        });
        let client = kube_control_plane::admin_client(layout).await?;
        kube_control_plane::install_crds(&client).await?;
        install::apply(&client).await?;
        kube_control_plane::write_agent_kubeconfig(&client, layout, state).await
    })?;
    if state.subnet_store == SubnetStore::Etcd {
        flannel::put_etcd_config(layout, state)?;
    }
    for i in 0..state.nodes.len() {
        let mut record = state.nodes[i].clone();
        let path = weft_datapath::netns::named_path(&layout.node_ns(&record.name));
        super::start_network(
            layout,
            state,
            &mut record,
            &weft_datapath::NetNs::open(path)?,
            bins,
        )?;
        state.nodes[i] = record;
    }
    layout.save(state)?;
    Ok(())
}

/// Waits until pods can be created and scheduled: the ServiceAccount
/// controller made namespace `default`'s account, and every node of
/// `state` is a Node the scheduler takes (no NoSchedule taint, such as
/// the not-ready one the node lifecycle controller may set at first).
pub(super) fn wait_schedulable(layout: &Layout, state: &LabState) -> Result<()> {
    super::runtime()?.block_on(async {
        let client = kube_control_plane::admin_client(layout).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let nodes: Api<Node> = Api::all(client);
        let deadline = Instant::now() + API_READY_WITHIN;
        loop {
            let account = accounts.get_opt("default").await?.is_some();
            let listed = nodes.list(&ListParams::default()).await?.items;
            let waiting: Vec<&str> = state
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .filter(|name| !listed.iter().any(|n| is_schedulable(n, name)))
                .collect();
            if account && waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not schedulable after {API_READY_WITHIN:?}: {}{}; see kube-controller-manager.log",
                    if account { "" } else { "no ServiceAccount default/default; " },
                    waiting.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Whether `node` is the Node `name` and takes pods.
fn is_schedulable(node: &Node, name: &str) -> bool {
    let spec = node.spec.clone().unwrap_or_default();
    node.metadata.name.as_deref() == Some(name)
        && !spec.unschedulable.unwrap_or(false)
        && !spec
            .taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
}

/// Server-side apply of `object`; whether it was created, changed or not.
async fn apply_one<K>(api: &Api<K>, object: &K) -> Result<Outcome>
where
    K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let before = api.get_opt(&name).await?;
    let params = PatchParams::apply(MANAGER).force();
    let after = api.patch(&name, &params, &Patch::Apply(object)).await?;
    Ok(match before {
        None => Outcome::Created,
        Some(b) if b.meta().resource_version == after.meta().resource_version => Outcome::Unchanged,
        Some(_) => Outcome::Configured,
    })
}

fn namespaced<K>(client: &Client, object: &K) -> Api<K>
where
    K: k8s_openapi::Resource<Scope = NamespaceResourceScope> + Metadata<Ty = ObjectMeta>,
{
    Api::namespaced(client.clone(), &key(object).0)
}

/// `weft lab apply` in Kubernetes mode: each object applied in order,
/// then the pods it stands for awaited until they run.
pub(super) fn apply(lab: &Lab, resources: &[Resource], report: Report<'_>) -> Result<()> {
    let (runtime, client) = api(lab)?;
    let started = Instant::now();
    runtime.block_on(async {
        let before: BTreeSet<(String, String)> = list_pods(client).await?.iter().map(key).collect();
        let mut awaited = Vec::new();
        for resource in resources {
            let object = resource.describe();
            let outcome = match resource {
                Resource::Namespace(n) => {
                    apply_one(&Api::<Namespace>::all(client.clone()), n).await
                }
                Resource::Service(s) => apply_one(&namespaced(client, s), s).await,
                Resource::Pod(p) => apply_one(&namespaced(client, p), p).await,
                Resource::Deployment(d) => apply_one(&namespaced(client, d), d).await,
                Resource::NetworkPolicy(np) => apply_one(&namespaced(client, np), np).await,
                Resource::ClusterNetworkPolicy(cnp) => {
                    apply_one(&Api::<ClusterNetworkPolicy>::all(client.clone()), cnp).await
                }
            }
            .with_context(|| format!("applying {object}"))?;
            match resource {
                Resource::Pod(p) if outcome == Outcome::Unchanged => {
                    report(Event::PodUnchanged { name: key(p).1 })
                }
                Resource::Pod(p) => awaited.push(Awaited::Pod(key(p))),
                Resource::Deployment(d) => {
                    report(Event::Applied { object, outcome });
                    awaited.push(Awaited::Deployment(key(d)));
                }
                _ => report(Event::Applied { object, outcome }),
            }
        }
        for what in &awaited {
            for pod in wait_running(client, what).await? {
                if !before.contains(&key(&pod)) {
                    report(super::pod_created(&pod, started));
                }
            }
        }
        Ok(())
    })
}

/// Pods `apply` waits for.
enum Awaited {
    Pod((String, String)),
    /// All the replicas of a Deployment.
    Deployment((String, String)),
}

async fn list_pods(client: &Client) -> Result<Vec<Pod>> {
    Ok(Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items)
}

/// Whether the kubelet started `pod`: Running, with its address.
fn is_running(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status.and_then(|s| s.pod_ip.as_ref()).is_some()
}

/// Why its kubelet could not start `pod`, if that is what it reported.
fn cannot_start(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        (waiting.reason.as_deref() == Some(node_kubelet::CREATE_ERROR))
            .then(|| waiting.message.clone().unwrap_or_default())
    })
}

/// Waits until the pods `what` stands for run; they come back. A pod
/// that does not run in [`POD_WAIT`] fails the wait with its status.
async fn wait_running(client: &Client, what: &Awaited) -> Result<Vec<Pod>> {
    let deadline = Instant::now() + POD_WAIT;
    loop {
        let (pods, wanted, name) = match what {
            Awaited::Pod((namespace, name)) => {
                let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
                (
                    api.get_opt(name).await?.into_iter().collect::<Vec<_>>(),
                    1,
                    format!("pod/{name}"),
                )
            }
            Awaited::Deployment((namespace, name)) => {
                let (pods, replicas) = deployment_pods(client, namespace, name).await?;
                (pods, replicas, format!("deployment/{name}"))
            }
        };
        let running: Vec<Pod> = pods.iter().filter(|p| is_running(p)).cloned().collect();
        if running.len() >= wanted {
            return Ok(running);
        }
        if let Some((pod, why)) = pods.iter().find_map(|p| Some((p, cannot_start(p)?))) {
            bail!(
                "{name}: pod {} cannot start: {why} (its kubelet tries again with a back-off; fix the manifest and apply it again)",
                key(pod).1
            );
        }
        if Instant::now() > deadline {
            let states: Vec<String> = pods
                .iter()
                .map(|p| format!("{} {}", key(p).1, crate::supervisor::display_status(p)))
                .collect();
            bail!(
                "{name}: {} of {wanted} pods running after {POD_WAIT:?} ({}); see `weft lab get pods` and the node's kubelet.log",
                running.len(),
                states.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pods a Deployment's selector matches and how many it wants.
async fn deployment_pods(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(Vec<Pod>, usize)> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let Some(deployment) = deployments.get_opt(name).await? else {
        return Ok((Vec::new(), 0));
    };
    let spec = deployment.spec.unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    let selector: Vec<String> = spec
        .selector
        .match_labels
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector.join(",")))
        .await?;
    Ok((list.items, replicas))
}

/// `weft lab delete` in Kubernetes mode: Services, NetworkPolicies,
/// ClusterNetworkPolicies, Deployments (with their pods) and Pods, each
/// deleted as kubectl does; waits until the
/// pods are gone, which is when their kubelet stopped them and ran CNI DEL.
pub(super) fn delete(
    lab: &Lab,
    doomed: &Deletions,
    grace: Duration,
    report: Report<'_>,
) -> Result<()> {
    let (runtime, client) = api(lab)?;
    let Deletions {
        services,
        policies,
        cluster_policies,
        deployments,
        pods,
    } = doomed;
    runtime.block_on(async {
        let mut gone = Vec::new();
        for (namespace, name) in services {
            let api: Api<Service> = Api::namespaced(client.clone(), namespace);
            let found = delete_one(&api, name, &DeleteParams::default()).await?;
            report(Event::Deleted { object: format!("service/{name}"), found });
        }
        for (namespace, name) in policies {
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
            let found = delete_one(&api, name, &DeleteParams::default()).await?;
            report(Event::Deleted { object: format!("networkpolicy/{name}"), found });
        }
        for name in cluster_policies {
            let api: Api<ClusterNetworkPolicy> = Api::all(client.clone());
            let found = delete_one(&api, name, &DeleteParams::default()).await?;
            report(Event::Deleted { object: format!("clusternetworkpolicy/{name}"), found });
        }
        for (namespace, name) in deployments {
            let (pods, _) = deployment_pods(client, namespace, name).await?;
            let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
            let found = delete_one(&api, name, &DeleteParams::background()).await?;
            report(Event::Deleted { object: format!("deployment/{name}"), found });
            gone.extend(pods.iter().map(key));
        }
        // The kubelet, not the API server, removes the pod once its
        // containers stopped and CNI DEL ran: a grace period of 0 would
        // drop the object at once and leave the kubelet to catch up.
        let params = DeleteParams {
            grace_period_seconds: Some(grace.as_secs().max(1) as u32),
            ..DeleteParams::default()
        };
        for (namespace, name) in pods {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            if delete_one(&api, name, &params).await? {
                gone.push((namespace.clone(), name.clone()));
            } else {
                report(Event::Deleted { object: format!("pod/{name}"), found: false });
            }
        }
        let deadline = Instant::now() + POD_WAIT + grace;
        for (namespace, name) in &gone {
            let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
            while api.get_opt(name).await?.is_some() {
                if Instant::now() > deadline {
                    bail!("pod {namespace}/{name} was not removed by its kubelet in {:?}; see the node's kubelet.log", POD_WAIT + grace);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if pods.contains(&(namespace.clone(), name.clone())) {
                report(Event::Deleted { object: format!("pod/{name}"), found: true });
            }
        }
        Ok(())
    })
}

/// Deletes `name`; whether it was there.
async fn delete_one<K>(api: &Api<K>, name: &str, params: &DeleteParams) -> Result<bool>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(false),
        Err(e) => Err(e).with_context(|| format!("deleting {name}")),
    }
}

/// Deletes the Node `node` (its podCIDR goes back to node IPAM).
pub(super) fn forget_node(lab: &Lab, node: &str) -> Result<()> {
    let (runtime, client) = api(lab)?;
    let nodes: Api<Node> = Api::all(client.clone());
    runtime.block_on(delete_one(&nodes, node, &DeleteParams::default()))?;
    Ok(())
}

/// Removes `pods` from the API server at once, as the pod garbage
/// collector does with the pods of a Node that is gone.
pub(super) fn force_delete(lab: &Lab, pods: &[Pod]) -> Result<()> {
    let (runtime, client) = api(lab)?;
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    runtime.block_on(async {
        for pod in pods {
            let (namespace, name) = key(pod);
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            delete_one(&api, &name, &force).await?;
        }
        Ok(())
    })
}
