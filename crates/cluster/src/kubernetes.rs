//! The seam on a real kube-apiserver, through kube-rs: typed watches are
//! kube-runtime's watchers (which list again by themselves after 410
//! Gone), retried with back-off while the API server is away; the last
//! failure is the source's [`Cluster::problem`] until a watch succeeds
//! again. A kind the API server does not serve (a CRD not installed) is
//! watched as a kind with no objects until it is served
//! (`none_while_unserved`).
//!
//! Subnets follow flannel's `--kube-subnet-mgr` ([`crate::flannel`]): a
//! node's subnet is its Node's podCIDR (node IPAM's choice), its data is
//! published as flannel's annotations plus `NetworkUnavailable=False`, and
//! every Node carrying them is a peer. Liveness is a `coordination.k8s.io`
//! Lease per agent in `kube-node-lease`, labelled as weft's.
//!
//! LoadBalancer allocation: the allocators elect a leader on a Lease in
//! weft's own namespace (`weft agent --namespace`, weft-system), read
//! the pools from a ConfigMap there, and write `services/status`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{Stream, StreamExt};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use kube::{Api, Client, Config};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::election::{self, Claim};
use crate::flannel;
use crate::leases::{LeaseRequest, NodePublication, SubnetLease, SubnetManager};
use crate::liveness::{self, Liveness, HEARTBEAT_NAMESPACE};
use crate::load_balancers::{
    AllocationEvent, LoadBalancerAllocation, ALLOCATOR_LEASE, POOLS_CONFIGMAP, POOLS_KEY,
};
use crate::warnings::{self, Warning, Warnings};
use crate::Problem;
use crate::{Cluster, ClusterError, Event, EventStream, Watched, RETRY_PAUSE};

/// The field manager weft's writes are recorded under.
const MANAGER: &str = "weft";
/// The label of weft's liveness Leases (kubelets keep theirs beside them).
const HEARTBEAT_LABEL: &str = "app.kubernetes.io/managed-by";

/// A cluster behind a kube-apiserver.
#[derive(Clone)]
pub struct Kubernetes {
    client: Client,
    /// weft's own namespace (its allocator Lease and pools ConfigMap).
    namespace: String,
    /// The last watch failure, cleared by the next event.
    problem: Problem,
    /// Events on Services (it folds repeats into a series).
    recorder: Recorder,
}

/// How the agent reaches the API server.
#[derive(Debug, Clone)]
pub enum ApiAccess {
    /// A kubeconfig file's cluster and user.
    Kubeconfig(PathBuf),
    /// The pod's service-account token and the in-cluster CA.
    InCluster,
}

impl Kubernetes {
    /// Connects as `access` says, to `server` (`https://HOST:PORT`) when
    /// given instead of the kubeconfig's or `KUBERNETES_SERVICE_HOST`.
    pub async fn connect(access: &ApiAccess, server: Option<&str>) -> Result<Self, ClusterError> {
        let mut config = match access {
            ApiAccess::Kubeconfig(path) => kubeconfig(path).await?,
            ApiAccess::InCluster => Config::incluster().map_err(|e| {
                ClusterError::Kubernetes(format!(
                    "no in-cluster access (a service-account token in a pod): {e}; pass --kubeconfig outside one"
                ))
            })?,
        };
        if let Some(server) = server {
            config.cluster_url = server.parse().map_err(|e| {
                ClusterError::Kubernetes(format!(
                    "the API server address {server:?} is not a URL like https://HOST:PORT: {e}"
                ))
            })?;
        }
        Self::with_config(config)
    }

    /// Connects with the kubeconfig at `path`.
    pub async fn from_kubeconfig(path: &Path) -> Result<Self, ClusterError> {
        Self::connect(&ApiAccess::Kubeconfig(path.to_owned()), None).await
    }

    fn with_config(config: Config) -> Result<Self, ClusterError> {
        let client = Client::try_from(config.clone())
            .map_err(|e| ClusterError::Kubernetes(format!("creating the API client: {e}")))?;
        let reporter = Reporter {
            controller: ALLOCATOR_LEASE.into(),
            instance: None,
        };
        Ok(Kubernetes {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace: config.default_namespace,
            problem: Problem::default(),
        })
    }

    /// The same cluster with weft's own objects in `namespace` (instead
    /// of the service account's or the kubeconfig context's).
    pub fn in_namespace(mut self, namespace: String) -> Self {
        self.namespace = namespace;
        self
    }

    /// The API client, for writes the seam does not cover yet.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl Cluster for Kubernetes {
    fn watch_without<K: Watched>(&self, absent: &'static [&'static str]) -> EventStream<K> {
        let api: Api<K> = Api::all(self.client.clone());
        let problem = self.problem.clone();
        let kind = K::KIND;
        let selector: Vec<String> = absent.iter().map(|label| format!("!{label}")).collect();
        let mut config = watcher::Config::default();
        if !selector.is_empty() {
            config = config.labels(&selector.join(","));
        }
        let watch = watcher(api, config)
            // 410 Gone: the watcher lists again on its next poll; pausing
            // first would only delay the catching up.
            .filter(move |item| {
                let gone = matches!(item, Err(watcher::Error::WatchError(status)) if status.code == 410);
                if gone {
                    tracing::info!(kind, "the API server no longer has this watch's version (410 Gone); listing again");
                }
                futures::future::ready(!gone)
            });
        // Before the back-off, so it still pauses after each 404 (and only
        // 404s reach it while the kind stays unserved: it backs off up to
        // its longest pause); after it, the 404s are dropped: not serving
        // a kind is how the cluster is, not a problem of the source.
        none_while_unserved(watch)
            .backoff(RetrySoon::default())
            .filter(|item| futures::future::ready(!matches!(item, Err(e) if is_unserved(e))))
            .map(move |item| match item {
                Ok(event) => {
                    problem.set(None);
                    Ok(event)
                }
                Err(e) => {
                    let why = format!("watching {kind}s on the API server: {e}");
                    problem.set(Some(why.clone()));
                    Err(ClusterError::Kubernetes(why))
                }
            })
            .boxed()
    }

    fn problem(&self) -> Option<String> {
        self.problem.get()
    }
}

/// Whether a watch failed because the API server does not serve its kind
/// at all: listing it, or watching it again after its CRD was deleted (the
/// watcher then retries the watch, not the list), is 404 Not Found.
fn is_unserved(e: &watcher::Error) -> bool {
    use watcher::Error::{InitialListFailed, WatchStartFailed};
    matches!(e, InitialListFailed(kube::Error::Api(status)) | WatchStartFailed(kube::Error::Api(status)) if status.code == 404)
}

/// A watch of a kind the API server does not serve, as a watch of a kind
/// with no objects: consumers wait for a synced view (`InitDone`) before
/// acting, and a cluster without a CRD (ClusterNetworkPolicy's, say) has
/// none of its objects, so must not hold them up. At the first 404 the
/// stream yields an empty list (`Init`, `InitDone`) and warns once; while
/// the kind stays unserved, the watcher's retries (an `Init`, which it
/// yields before each list, then the 404) pass on only as the 404, so
/// consumers see nothing more. A list or watch that succeeds (the CRD
/// installed) comes through as usual, and a later 404 (the CRD deleted:
/// its objects are gone with it) is a new empty list.
///
/// The 404s stay in the stream (for the back-off); `Init` is held back
/// until the item after it, which is how a failed list's `Init` is known.
fn none_while_unserved<K, S>(watch: S) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: k8s_openapi::Resource,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    #[derive(Default)]
    struct Seen {
        /// An `Init` not passed on yet.
        init: bool,
        /// The empty list was yielded, and the kind not seen served since.
        unserved: bool,
    }
    watch
        .scan(Seen::default(), |seen, item| {
            let out = match item {
                Ok(Event::Init) => {
                    seen.init = true;
                    Vec::new()
                }
                Err(e) if is_unserved(&e) => {
                    seen.init = false;
                    if std::mem::replace(&mut seen.unserved, true) {
                        vec![Err(e)]
                    } else {
                        let (kind, plural) = (K::KIND, K::URL_PATH_SEGMENT);
                        tracing::warn!(
                            kind,
                            "the API server does not serve {plural} (is the CRD of {kind} installed?): treating them as none until it does"
                        );
                        vec![Ok(Event::Init), Ok(Event::InitDone), Err(e)]
                    }
                }
                other => {
                    // Anything but an error is the kind served.
                    seen.unserved &= other.is_err();
                    let init = std::mem::take(&mut seen.init).then_some(Ok(Event::Init));
                    init.into_iter().chain([other]).collect()
                }
            };
            futures::future::ready(Some(futures::stream::iter(out)))
        })
        .flatten()
}

/// The configuration of the kubeconfig at `path`.
async fn kubeconfig(path: &Path) -> Result<Config, ClusterError> {
    let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
        ClusterError::Kubernetes(format!("reading the kubeconfig {}: {e}", path.display()))
    })?;
    Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| ClusterError::Kubernetes(format!("the kubeconfig {}: {e}", path.display())))
}

/// How a watch retries while the API server is away: soon (100 ms,
/// doubling up to 1 s), so a change made right after it returns is seen
/// within a second. An agent's retries are a few light requests a second.
#[derive(Debug, Clone, Copy)]
struct RetrySoon {
    next: Duration,
}

impl RetrySoon {
    const FIRST: Duration = Duration::from_millis(100);
    const LONGEST: Duration = Duration::from_secs(1);
}

impl Default for RetrySoon {
    fn default() -> Self {
        RetrySoon { next: Self::FIRST }
    }
}

impl Iterator for RetrySoon {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Self::LONGEST);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for RetrySoon {
    fn reset(&mut self) {
        *self = RetrySoon::default();
    }
}

fn api_error(what: &str, e: kube::Error) -> ClusterError {
    ClusterError::Kubernetes(format!("{what}: {e}"))
}

impl Kubernetes {
    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// `node`'s lease once node IPAM gave it a podCIDR.
    async fn lease_of_node(
        &self,
        request: &LeaseRequest,
    ) -> Result<Option<SubnetLease>, ClusterError> {
        let node = self
            .nodes()
            .get_opt(&request.node)
            .await
            .map_err(|e| api_error(&format!("reading node {}", request.node), e))?;
        let Some(node) = node else { return Ok(None) };
        let Some(subnet) = flannel::pod_cidr(&node) else {
            return Ok(None);
        };
        let public_ip =
            flannel::public_ip(&node, request.public_ip).map_err(ClusterError::Kubernetes)?;
        Ok(Some(SubnetLease {
            node: request.node.clone(),
            subnet: IpNet::V4(subnet),
            public_ip,
            backend: request.backend.clone(),
            expires_at: None,
        }))
    }
}

impl SubnetManager for Kubernetes {
    /// Waits until the Node exists and node IPAM (kube-controller-manager
    /// `--allocate-node-cidrs`) set its podCIDR; the chooser is not used:
    /// the subnet is the cluster's choice, not the agent's.
    async fn acquire(
        &self,
        request: &LeaseRequest,
        _choose: impl Fn(&[IpNet]) -> Option<IpNet> + Send,
    ) -> Result<SubnetLease, ClusterError> {
        let mut said = false;
        loop {
            match self.lease_of_node(request).await {
                Ok(Some(lease)) => return Ok(lease),
                Ok(None) if !said => {
                    tracing::warn!(node = %request.node, "waiting for the Node to get a podCIDR: run kube-controller-manager with --allocate-node-cidrs and --cluster-cidr (the Network of net-conf.json)");
                    said = true;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading this node's podCIDR failed; retrying")
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// A Node's podCIDR does not expire: renewing reads the lease back as
    /// the other nodes see it.
    async fn renew(&self, node: &str, _ttl: Duration) -> Result<SubnetLease, ClusterError> {
        let held = self
            .nodes()
            .get(node)
            .await
            .map_err(|e| api_error(&format!("reading node {node}"), e))?;
        flannel::lease_of(&held).ok_or_else(|| {
            ClusterError::Kubernetes(format!(
                "node {node} lost its podCIDR or weft's annotations; restart the agent to publish them again"
            ))
        })
    }

    /// Every Node with flannel's annotations and a podCIDR, as a lease; a
    /// Node that loses them (or goes) is a deleted lease.
    fn watch_leases(&self) -> EventStream<SubnetLease> {
        self.watch::<Node>()
            .filter_map(|item| async move {
                let event = match item {
                    Err(e) => return Some(Err(e)),
                    Ok(event) => event,
                };
                let gone = |node: &Node| SubnetLease {
                    node: node.metadata.name.clone().unwrap_or_default(),
                    subnet: IpNet::V4(Ipv4Net::default()),
                    public_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
                    backend: json!({}),
                    expires_at: None,
                };
                Some(Ok(match event {
                    Event::Init => Event::Init,
                    Event::InitDone => Event::InitDone,
                    Event::InitApply(node) => Event::InitApply(flannel::lease_of(&node)?),
                    Event::Apply(node) => match flannel::lease_of(&node) {
                        Some(lease) => Event::Apply(lease),
                        None => Event::Delete(gone(&node)),
                    },
                    Event::Delete(node) => Event::Delete(gone(&node)),
                }))
            })
            .boxed()
    }

    /// flannel's annotations on the Node and `NetworkUnavailable=False` on
    /// its status, both through `nodes/status` and only when they differ.
    async fn publish_node(&self, publication: &NodePublication) -> Result<(), ClusterError> {
        let nodes = self.nodes();
        let name = &publication.node;
        let node = nodes
            .get(name)
            .await
            .map_err(|e| api_error(&format!("reading node {name}"), e))?;
        let wanted = flannel::annotations(&publication.backend, publication.public_ip);
        if !flannel::annotated(&node, &wanted) {
            // Through nodes/status, as flanneld does: the only Node write
            // an agent's role needs.
            let patch = json!({"metadata": {"annotations": wanted}});
            nodes
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| api_error(&format!("annotating node {name}"), e))?;
        }
        let available = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "NetworkUnavailable" && c.status == "False");
        if !available {
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(liveness::now());
            let patch = json!({"status": {"conditions": [{
                "type": "NetworkUnavailable", "status": "False",
                "reason": "WeftIsUp", "message": "weft is running on this node",
                "lastTransitionTime": now, "lastHeartbeatTime": now,
            }]}});
            nodes
                .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await
                .map_err(|e| api_error(&format!("setting node {name}'s NetworkUnavailable"), e))?;
        }
        Ok(())
    }
}

impl Liveness for Kubernetes {
    async fn beat(&self, node: &str, valid_for: Duration) -> Result<(), ClusterError> {
        let mut lease = liveness::heartbeat(node, valid_for, liveness::now());
        lease.metadata.name = Some(heartbeat_name(node));
        lease.metadata.labels = Some([(HEARTBEAT_LABEL.to_owned(), MANAGER.to_owned())].into());
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), HEARTBEAT_NAMESPACE);
        leases
            .patch(
                &heartbeat_name(node),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
            .map_err(|e| api_error(&format!("renewing the heartbeat of node {node}"), e))?;
        Ok(())
    }

    async fn live_nodes(&self) -> Result<BTreeSet<String>, ClusterError> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), HEARTBEAT_NAMESPACE);
        let selector = format!("{HEARTBEAT_LABEL}={MANAGER}");
        let list = leases
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| api_error("listing node heartbeats", e))?;
        Ok(liveness::live(&list.items, liveness::now()))
    }
}

impl LoadBalancerAllocation for Kubernetes {
    /// Reads the allocator Lease and writes the claim with its
    /// resourceVersion: a candidate that loses the race (409) does not lead.
    async fn lead(&self, candidate: &str, term: Duration) -> Result<bool, ClusterError> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let what = format!("the Lease {}/{ALLOCATOR_LEASE}", self.namespace);
        let current = leases
            .get_opt(ALLOCATOR_LEASE)
            .await
            .map_err(|e| api_error(&format!("reading {what}"), e))?;
        let spec = match election::claim(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            candidate,
            term,
            liveness::now(),
        ) {
            Claim::HeldBy(_) => return Ok(false),
            Claim::Write(spec) => spec,
        };
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(ALLOCATOR_LEASE.into()),
                        namespace: Some(self.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                leases.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                leases
                    .replace(ALLOCATOR_LEASE, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_already_exists() => {
                Ok(false)
            }
            Err(e) => Err(api_error(&format!("writing {what}"), e)),
        }
    }

    async fn load_balancer_pools(&self) -> Result<Option<String>, ClusterError> {
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let map = maps.get_opt(POOLS_CONFIGMAP).await.map_err(|e| {
            api_error(
                &format!("reading the ConfigMap {}/{POOLS_CONFIGMAP}", self.namespace),
                e,
            )
        })?;
        Ok(map
            .and_then(|m| m.data)
            .and_then(|mut data| data.remove(POOLS_KEY)))
    }

    async fn set_load_balancer_ingress(
        &self,
        namespace: &str,
        name: &str,
        ips: &[std::net::Ipv4Addr],
    ) -> Result<(), ClusterError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let ingress: Vec<_> = ips
            .iter()
            .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
            .collect();
        // A merge patch replaces the whole list: no stale address stays.
        let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
        services
            .patch_status(name, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error(&format!("writing Service {namespace}/{name}'s status"), e))?;
        Ok(())
    }

    /// As MetalLB's controller: `IPAllocated`, or a warning
    /// `AllocationFailed` with the reason.
    async fn record(&self, service: &Service, event: AllocationEvent) -> Result<(), ClusterError> {
        let (type_, reason, note) = match event {
            AllocationEvent::Allocated(ips) => {
                let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
                let note = if ips.is_empty() {
                    "LoadBalancer address released".to_owned()
                } else {
                    format!("Assigned IP {}", ips.join(", "))
                };
                (EventType::Normal, "IPAllocated", note)
            }
            AllocationEvent::Failed(why) => (EventType::Warning, "AllocationFailed", why),
        };
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "AllocateLoadBalancerAddress".into(),
            secondary: None,
        };
        self.recorder
            .publish(&event, &service.object_ref(&()))
            .await
            .map_err(|e| api_error("recording an Event on a Service", e))
    }
}

impl Warnings for Kubernetes {
    async fn warn_service(
        &self,
        namespace: &str,
        name: &str,
        warning: &Warning,
    ) -> Result<(), ClusterError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let what = format!("reading Service {namespace}/{name} to record a warning on it");
        let Some(service) = services
            .get_opt(name)
            .await
            .map_err(|e| api_error(&what, e))?
        else {
            return Ok(());
        };
        // One reporter per node, as kube-proxy reports from each node.
        let reporter = Reporter {
            controller: warnings::REPORTER.into(),
            instance: Some(warning.node.clone()),
        };
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: warning.reason.into(),
            note: Some(warning.note.clone()),
            action: warnings::ACTION.into(),
            secondary: None,
        };
        Recorder::new(self.client.clone(), reporter)
            .publish(&event, &service.object_ref(&()))
            .await
            .map_err(|e| api_error("recording an Event on a Service", e))
    }
}

/// weft's heartbeat beside the kubelet's Lease of the same node:
/// `weft-<node>`, or for a node name too long for that (a Lease name is
/// at most 253 characters) its start and a hash of the whole, so distinct
/// nodes keep distinct Leases. The holder identity stays the node's name.
fn heartbeat_name(node: &str) -> String {
    const MAX: usize = 253;
    let name = format!("weft-{node}");
    if name.len() <= MAX {
        return name;
    }
    let digest = Sha256::digest(node.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // Node names are DNS-1123 subdomains (ASCII): any cut is a char boundary.
    let head = name[..MAX - hash.len() - 1].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn heartbeat_names_fit_a_lease_name_and_stay_distinct() {
        assert_eq!(heartbeat_name("node-a"), "weft-node-a");
        let long = |last: char| format!("{}{last}", "a".repeat(252));
        let (one, two) = (heartbeat_name(&long('b')), heartbeat_name(&long('c')));
        assert_ne!(one, two);
        for name in [one, two] {
            assert_eq!(name.len(), 253, "{name}");
            weft_validation::names::dns1123_subdomain(&name).unwrap();
        }
    }

    /// A list's failure with HTTP status `code`, as kube-rs reports it
    /// when the body is not a Status (kube-apiserver answers a resource it
    /// does not serve with a plain `404 page not found`).
    fn list_failed(code: u16) -> watcher::Error {
        watcher::Error::InitialListFailed(api_failure(code))
    }

    fn api_failure(code: u16) -> kube::Error {
        let status = kube::core::Status::failure("page not found", "Failed to parse error data")
            .with_code(code);
        kube::Error::Api(status.boxed())
    }

    fn config_map(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// What `items` become through [`none_while_unserved`], in words.
    fn through(items: Vec<Result<Event<ConfigMap>, watcher::Error>>) -> String {
        let out = none_while_unserved(futures::stream::iter(items));
        let words: Vec<String> = futures::executor::block_on(out.collect::<Vec<_>>())
            .into_iter()
            .map(|item| match item {
                Ok(event) => event.to_string(),
                Err(e) if is_unserved(&e) => "404".into(),
                Err(_) => "error".into(),
            })
            .collect();
        words.join(" ")
    }

    #[test]
    fn an_unserved_kind_is_one_empty_list_until_it_is_served() {
        let unserved = || vec![Ok(Event::Init), Err(list_failed(404))];
        let mut items = Vec::new();
        // Unserved, retried three times: one empty list, then only the
        // 404s (for the back-off, dropped after it).
        for _ in 0..3 {
            items.extend(unserved());
        }
        // The API server away meanwhile: its errors pass as before.
        items.extend([Ok(Event::Init), Err(list_failed(500))]);
        items.extend(unserved());
        // The CRD installed: its objects listed as usual.
        items.extend([
            Ok(Event::Init),
            Ok(Event::InitApply(config_map("a"))),
            Ok(Event::InitDone),
            Ok(Event::Apply(config_map("b"))),
        ]);
        // Gone again, found by a list: one empty list again.
        items.extend(unserved());
        items.extend(unserved());
        assert_eq!(
            through(items),
            "Init InitDone 404 404 404 Init error 404 \
             Init InitApply(a) InitDone Apply(b) Init InitDone 404 404"
        );
    }

    #[test]
    fn a_kind_whose_crd_is_deleted_while_watched_is_one_empty_list() {
        // The watch ends with the CRD; the watcher starts it again (it
        // does not list again) and fails until the CRD is back.
        let watch_failed = || Err(watcher::Error::WatchStartFailed(api_failure(404)));
        let items = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(config_map("a"))),
            Ok(Event::InitDone),
            watch_failed(),
            watch_failed(),
            Ok(Event::Apply(config_map("b"))),
        ];
        assert_eq!(
            through(items),
            "Init InitApply(a) InitDone Init InitDone 404 404 Apply(b)"
        );
    }

    #[test]
    fn a_served_kind_passes_unchanged() {
        let items = vec![
            Ok(Event::Init),
            Err(list_failed(500)),
            Ok(Event::Init),
            Ok(Event::InitDone),
            Ok(Event::Delete(config_map("a"))),
        ];
        assert_eq!(through(items), "Init error Init InitDone Delete(a)");
    }

    #[test]
    fn retries_come_soon_and_never_later_than_a_second() {
        let mut retry = RetrySoon::default();
        let waits: Vec<u128> = retry.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        retry.reset();
        assert_eq!(retry.next(), Some(Duration::from_millis(100)));
    }
}
