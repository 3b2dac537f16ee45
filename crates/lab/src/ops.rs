//! `weft lab` operations. Each one loads the lab's state, does its work
//! through the underlay, agents, kubelet and controller modules, and
//! reports what it did as typed results ([`crate::report`]) — it prints
//! nothing itself. Failures say what went wrong and what to run
//! next. Every operation that changes Services or Pods ends by syncing the
//! EndpointSlices, as the cluster's controllers would.
//!
//! - `matrix`: `weft lab probe`.
//! - `denials`: `weft lab denials`.
//! - `tables`: `weft lab get services|endpointslices|events|networkpolicies|clusternetworkpolicies`.

mod cluster;
mod denials;
mod explain;
mod kubernetes;
mod labels;
mod matrix;
mod tables;

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Resource as _;
use nix::fcntl::Flock;
use serde_json::json;
use weft_datapath::{netns, NetNs, Netlink};
use weft_policy::api::ClusterNetworkPolicy;
use weft_store::Store;
use weft_validation::names;

use crate::kubelet::Kubelet;
use crate::layout::{self, ControlPlane, LabState, Layout, NodeRecord};
use crate::manifest::{self, Resource};
use crate::report::{Event, LabStatus, NodeRow, Outcome, PodRow, Report};
use crate::services::{self, Pools};
use crate::{
    agents, endpointslices, flannel, kube_control_plane, kube_proxies, node_kubelet, objects,
    procs, underlay,
};
use cluster::Cluster;

pub use denials::{denials, DenialsOptions};
pub use explain::{explain, ExplainOptions};
pub use labels::{label, LabelChange, Labelled};
pub use matrix::{all_ok, matrix_json, matrix_text, probe_matrix, ProbeOptions, ProbeResult};
pub use tables::{
    get_cluster_network_policies, get_endpointslices, get_events, get_network_policies,
    get_services,
};

/// The external client's port on the underlay bridge.
const EXTERNAL_PORT: &str = "ext";

/// The binaries a lab runs: `weft` (agents, netexec) and `weft-cni`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub weft: PathBuf,
    pub plugin: PathBuf,
}

impl Binaries {
    /// `weft` is this executable; `weft-cni` sits next to it.
    pub fn beside_current_exe() -> Result<Self> {
        let weft = std::env::current_exe()?;
        let plugin = weft.with_file_name("weft-cni");
        if !plugin.is_file() {
            bail!(
                "weft-cni not found next to {}; build both with `cargo build --release`",
                weft.display()
            );
        }
        Ok(Self { weft, plugin })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub struct UpOptions {
    pub name: String,
    pub nodes: u32,
    pub backend: String,
    pub pod_cidr: String,
    pub underlay: String,
    pub service_cidr: String,
    /// `None`: the underlay's last 16 addresses.
    pub lb_cidr: Option<String>,
    /// Kubernetes' own control plane instead of the embedded store.
    pub kubernetes: bool,
    /// What implements Services (kube-proxy only with `kubernetes`).
    pub proxy: layout::Proxy,
    /// What runs every node's pod network (flanneld only with `kubernetes`).
    pub network: layout::Network,
    /// Where the nodes keep their subnet leases (etcd only with `kubernetes`).
    pub subnet_store: layout::SubnetStore,
}

fn parse_net<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse()
        .with_context(|| format!("--{flag} {text:?} is not a network (write it like 10.96.0.0/16)"))
}

/// `weft lab up`: underlay, external client, nodes, one agent each; waits
/// until every node holds a lease and has its CNI configuration.
pub fn up(opts: &UpOptions, bins: &Binaries, report: Report<'_>) -> Result<()> {
    let started = Instant::now();
    let layout = Layout::new(&opts.name)?;
    if layout.load().is_ok() {
        bail!(
            "lab {} already exists; remove it with `weft lab down --name {}` first",
            opts.name,
            opts.name
        );
    }
    if opts.proxy == layout::Proxy::KubeProxy && !opts.kubernetes {
        bail!(
            "--proxy kube-proxy needs --control-plane kubernetes (kube-proxy reads an API server)"
        );
    }
    if !opts.kubernetes && opts.network == layout::Network::Flannel {
        bail!("--network flannel needs --control-plane kubernetes (flanneld reads an API server or etcd)");
    }
    if !opts.kubernetes && opts.subnet_store == layout::SubnetStore::Etcd {
        bail!(
            "--subnet-store etcd needs --control-plane kubernetes (the lab's etcd is Kubernetes')"
        );
    }
    if !matches!(opts.backend.as_str(), "vxlan" | "host-gw") {
        bail!(
            "--backend {:?} is not supported: use vxlan or host-gw",
            opts.backend
        );
    }
    let underlay_net: Ipv4Net = parse_net("underlay-cidr", &opts.underlay)?;
    let pod_cidr: IpNet = parse_net("pod-cidr", &opts.pod_cidr)?;
    let service_cidr: Ipv4Net = parse_net("service-cidr", &opts.service_cidr)?;
    let lb_pool = match &opts.lb_cidr {
        Some(text) => parse_net("lb-cidr", text)?,
        None => layout::default_lb_pool(underlay_net),
    };
    let mut state = LabState {
        name: opts.name.clone(),
        backend: opts.backend.clone(),
        pod_cidr: opts.pod_cidr.clone(),
        underlay: underlay_net,
        nodes: Vec::new(),
        service_cidr,
        lb_pool: Some(lb_pool),
        control_plane: ControlPlane::Embedded,
        proxy: opts.proxy,
        subnet_store: opts.subnet_store,
    };
    let ranges = underlay::Ranges {
        underlay: underlay_net,
        pod_cidr,
        service_cidr,
        lb_pool,
        external: state.external_ip(),
    };
    underlay::check_ranges(&ranges, state.first_node_ip())?;
    let rt = runtime()?;
    rt.block_on(async {
        let host = Netlink::connect()?;
        underlay::check_host_routes(
            &host,
            "underlay range",
            "underlay-cidr",
            IpNet::V4(underlay_net),
        )
        .await?;
        underlay::check_host_routes(&host, "pod CIDR", "pod-cidr", pod_cidr).await?;
        underlay::check_host_routes(
            &host,
            "service CIDR",
            "service-cidr",
            IpNet::V4(service_cidr),
        )
        .await?;
        Ok::<_, anyhow::Error>(())
    })?;
    let net_conf = json!({"Network": opts.pod_cidr, "SubnetLen": layout::SUBNET_LEN, "Backend": {"Type": opts.backend}});
    weft_agent::config::NetConf::parse(&net_conf.to_string())?;
    std::fs::create_dir_all(&layout.root)?;
    std::fs::write(layout.net_conf(), serde_json::to_string_pretty(&net_conf)?)?;
    layout.save(&state)?;
    let result = (|| -> Result<()> {
        if !opts.kubernetes {
            let store = Store::open(&layout.store())?;
            store.put_typed(&services::default_service_cidr(service_cidr))?;
        }
        rt.block_on(underlay::create(&layout.underlay_ns()))?;
        report(Event::UnderlayCreated {
            namespace: layout.underlay_ns(),
            network: underlay_net,
        });
        create_external(&layout, &state, &rt)?;
        report(Event::ExternalCreated {
            namespace: layout.external_ns(),
            ip: state.external_ip(),
        });
        let control_plane_started = Instant::now();
        if opts.kubernetes {
            // The API server starts (seconds) while the nodes are made;
            // their kubelets wait for it.
            let host_port = kube_control_plane::start(&layout, &state, &bins.weft)?;
            state.control_plane = ControlPlane::Kubernetes { host_port };
            layout.save(&state)?;
            report(Event::ControlPlaneStarted {
                namespace: layout.control_plane_ns(),
                ip: state.control_plane_ip(),
                kubeconfig: kube_control_plane::admin_kubeconfig(&layout),
            });
        }
        for i in 1..=opts.nodes {
            let name = format!("node-{i}");
            add_node_to(&layout, &mut state, &name, opts.network, bins, &rt, report)?;
        }
        if opts.kubernetes {
            kubernetes::bootstrap(&layout, &mut state, bins, control_plane_started, report)?;
        }
        wait_ready(&layout, &state, Duration::from_secs(30))?;
        if opts.kubernetes {
            kubernetes::wait_schedulable(&layout, &state)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = down(&opts.name, report);
        return Err(e.context(format!("lab {} could not start and was removed", opts.name)));
    }
    report(Event::LabUp {
        name: opts.name.clone(),
        nodes: opts.nodes,
        backend: opts.backend.to_string(),
        pod_cidr: opts.pod_cidr.to_string(),
        service_cidr: service_cidr.to_string(),
        lb_pool: lb_pool.to_string(),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(())
}

/// The external client: a namespace on the underlay at `.2`, no default
/// route — a machine outside the cluster on the nodes' network.
fn create_external(layout: &Layout, state: &LabState, rt: &tokio::runtime::Runtime) -> Result<()> {
    let name = layout.external_ns();
    let ns = netns::create_named(&name)?;
    let attached = NetNs::open(netns::named_path(&layout.underlay_ns()))
        .map_err(anyhow::Error::from)
        .and_then(|under| {
            rt.block_on(underlay::attach(
                &under,
                &ns,
                EXTERNAL_PORT,
                state.external_ip(),
                state.underlay,
            ))
            .map_err(anyhow::Error::from)
        });
    if let Err(e) = attached {
        let _ = netns::delete_named(&name);
        return Err(e.context("attaching the external client to the underlay"));
    }
    Ok(())
}

fn add_node_to(
    layout: &Layout,
    state: &mut LabState,
    name: &str,
    network: layout::Network,
    bins: &Binaries,
    rt: &tokio::runtime::Runtime,
    report: Report<'_>,
) -> Result<()> {
    layout::check_node_name(name)?;
    if state.node(name).is_some() {
        bail!("node {name} already exists in lab {}", state.name);
    }
    let (index, ip) = state.next_slot()?;
    let ns_name = layout.node_ns(name);
    let ns = netns::create_named(&ns_name)?;
    let started = (|| -> Result<NetNs> {
        let under = NetNs::open(netns::named_path(&layout.underlay_ns()))?;
        rt.block_on(async {
            underlay::attach(&under, &ns, &format!("n{index}"), ip, state.underlay).await?;
            underlay::route_services(&ns, state.service_cidr).await
        })?;
        Ok(ns)
    })();
    // A node that could not start leaves nothing that would block the
    // next `node add` of the same name.
    let ns = started.inspect_err(|_| {
        let _ = netns::delete_named(&ns_name);
    })?;
    state.nodes.push(NodeRecord {
        name: name.into(),
        ip,
        index,
        agent_pid: None,
        kubelet_pid: None,
        kube_proxy_pid: None,
        network,
    });
    layout.save(state)?;
    let record = start_node(layout, state, name, &ns, bins)?;
    if let Some(n) = state.nodes.iter_mut().find(|n| n.name == name) {
        *n = record.clone();
    }
    layout.save(state)?;
    report(Event::NodeStarted {
        name: name.into(),
        ip,
        agent: record.agent_pid,
        kubelet: record.kubelet_pid,
    });
    Ok(())
}

/// Starts a node's processes: its agent; in Kubernetes mode its kubelet
/// first, and the agent only once the agents' credentials exist (during
/// `up`, after the API server is ready).
fn start_node(
    layout: &Layout,
    state: &LabState,
    name: &str,
    ns: &NetNs,
    bins: &Binaries,
) -> Result<NodeRecord> {
    let mut record = state.node(name).cloned().context("the node is recorded")?;
    if matches!(state.control_plane, ControlPlane::Kubernetes { .. }) {
        record.kubelet_pid = Some(node_kubelet::start(layout, &bins.weft, name, ns)?);
        if !kube_control_plane::agent_kubeconfig(layout).exists() {
            return Ok(record);
        }
    }
    start_network(layout, state, &mut record, ns, bins)?;
    Ok(record)
}

/// Starts the node's agent and, in labs that compare proxies, its
/// kube-proxy.
fn start_network(
    layout: &Layout,
    state: &LabState,
    record: &mut NodeRecord,
    ns: &NetNs,
    bins: &Binaries,
) -> Result<()> {
    record.agent_pid = Some(match record.network {
        layout::Network::Weft => agents::start(layout, state, &bins.weft, &record.name, ns)?,
        layout::Network::Flannel => flannel::start(layout, state, &record.name, ns)?,
    });
    if state.proxy == layout::Proxy::KubeProxy {
        record.kube_proxy_pid = Some(kube_proxies::start(layout, state, &record.name, ns)?);
    }
    Ok(())
}

/// Whether the network agent of `node` holds a subnet: weft's wrote its
/// conflist then, flanneld its subnet.env.
fn holds_subnet(layout: &Layout, node: &NodeRecord) -> bool {
    let dir = layout.node_dir(&node.name);
    match node.network {
        layout::Network::Weft => dir.join("net.d/10-weft.conflist").is_file(),
        layout::Network::Flannel => dir.join("subnet.env").is_file(),
    }
}

/// Waits until every node's agent holds a subnet and routes to every
/// other node.
fn wait_ready(layout: &Layout, state: &LabState, limit: Duration) -> Result<()> {
    let rt = runtime()?;
    let deadline = Instant::now() + limit;
    loop {
        let missing: Vec<&str> = state
            .nodes
            .iter()
            .filter(|n| !holds_subnet(layout, n))
            .map(|n| n.name.as_str())
            .collect();
        if missing.is_empty() && meshed(&rt, layout, state, state.nodes.len())? {
            return Ok(());
        }
        for n in &state.nodes {
            let kubelet_exited = n.kubelet_pid.is_some()
                && !procs::is_ours(
                    n.kubelet_pid.unwrap_or(0),
                    &node_kubelet::owner(layout, &n.name),
                );
            let (process, log) = if kubelet_exited {
                ("kubelet", "kubelet.log")
            } else if !agents::is_running(layout, &n.name, n.agent_pid) {
                ("agent", "agent.log")
            } else {
                continue;
            };
            let log =
                std::fs::read_to_string(layout.node_dir(&n.name).join(log)).unwrap_or_default();
            bail!("the {process} of {} exited:\n{}", n.name, exit_cause(&log));
        }
        if Instant::now() > deadline {
            bail!(
                "nodes {} did not become ready in {limit:?}; see their agent.log",
                missing.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether every node of `state` whose agent runs routes to all
/// `total - 1` other nodes (a stopped agent converges when it starts).
fn meshed(
    rt: &tokio::runtime::Runtime,
    layout: &Layout,
    state: &LabState,
    total: usize,
) -> Result<bool> {
    let pod_network: IpNet = state.pod_cidr.parse()?;
    for node in state
        .nodes
        .iter()
        .filter(|n| agents::is_running(layout, &n.name, n.agent_pid))
    {
        let ns = NetNs::open(netns::named_path(&layout.node_ns(&node.name)))?;
        let routes = rt.block_on(async { Netlink::connect_in(&ns)?.routes(false).await })?;
        // Routes to other nodes' subnets, weft's or flanneld's: inside the
        // pod network and not the kernel's own (the node's bridge subnet).
        let to_nodes = routes
            .iter()
            .filter(|r| r.protocol != Some(RTPROT_KERNEL))
            .filter(|r| r.dst.is_some_and(|dst| pod_network.contains(&dst)))
            .count();
        if to_nodes + 1 < total {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The kernel's own routes (RTPROT_KERNEL): those of an interface's
/// addresses.
const RTPROT_KERNEL: u8 = 2;

/// What an exited agent's log says about why: its final error (the block
/// from the last `Error:` line, without a backtrace, which would otherwise
/// fill the excerpt), or else the last lines of the log.
fn exit_cause(log: &str) -> String {
    const LINES: usize = 15;
    let lines: Vec<&str> = log.lines().collect();
    let cause = match lines.iter().rposition(|line| line.starts_with("Error: ")) {
        Some(start) => lines[start..]
            .iter()
            .take_while(|line| !line.starts_with("Stack backtrace:"))
            .take(LINES)
            .copied()
            .collect::<Vec<_>>(),
        None => lines[lines.len().saturating_sub(LINES)..].to_vec(),
    };
    cause.join("\n")
}

#[cfg(test)]
mod tests {
    use super::exit_cause;

    #[test]
    fn the_exit_cause_is_the_agents_error_without_its_backtrace() {
        let log = "INFO starting\nError: opening the cluster store\n\nCaused by:\n    database is locked\n\nStack backtrace:\n   0: main\n   1: _start\n";
        assert_eq!(
            exit_cause(log),
            "Error: opening the cluster store\n\nCaused by:\n    database is locked\n"
        );
    }

    #[test]
    fn without_an_error_line_the_exit_cause_is_the_end_of_the_log() {
        let log: String = (1..=20).map(|n| format!("line {n}\n")).collect();
        assert_eq!(exit_cause(&log).lines().next(), Some("line 6"));
        assert_eq!(exit_cause(&log).lines().count(), 15);
    }
}

/// `weft lab down`: stops every process of the lab, removes every
/// namespace and file. Works from whatever is left, even a half-built lab
/// or one whose store is gone: processes are found by their owner tag and
/// namespaces by their name. A command still working on the lab is told
/// to stop (it checks under the lab lock) and waited for, briefly.
pub fn down(name: &str, report: Report<'_>) -> Result<()> {
    let layout = Layout::new(name)?;
    let waited = layout.root.exists().then(|| {
        let _ = std::fs::write(layout.going_down(), b"");
        layout.lock_within(DOWN_WAITS_FOR_LOCK)
    });
    let stopped = procs::stop_owned(&format!("{name}/"), Duration::from_secs(2));
    let prefix = layout.ns_prefix();
    let mut removed = 0;
    for ns in netns::list_named()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
    {
        netns::delete_named(&ns)?;
        removed += 1;
    }
    if layout.root.exists() {
        std::fs::remove_dir_all(&layout.root)
            .with_context(|| format!("removing {}", layout.root.display()))?;
    }
    drop(waited);
    report(Event::LabRemoved {
        name: name.into(),
        namespaces: removed,
        processes: stopped,
    });
    Ok(())
}

/// How long `down` waits for a command that holds the lab lock (one pod
/// start takes at most a few seconds) before tearing down regardless.
const DOWN_WAITS_FOR_LOCK: Duration = Duration::from_secs(10);

/// `weft lab down --all`: every lab anything is left of — its directory,
/// its underlay namespace or a process carrying its owner tag (a lab whose
/// directory was deleted by hand still has the others).
pub fn down_all(report: Report<'_>) -> Result<()> {
    let labs = layout::labs_left(layout::labs(), &netns::list_named(), &procs::owners());
    for lab in labs {
        down(&lab, report)?;
    }
    Ok(())
}

/// Refuses a namespace or object name given on the command line that no
/// object can have, before it reaches the store or a path.
fn check_name(
    kind: &str,
    namespace: &str,
    name: &str,
    rule: fn(&str) -> Result<(), String>,
) -> Result<()> {
    names::dns1123_label(namespace)
        .map_err(|reason| anyhow::anyhow!("namespace {namespace:?} is invalid: {reason}"))?;
    rule(name).map_err(|reason| anyhow::anyhow!("{kind} name {name:?} is invalid: {reason}"))
}

struct Lab {
    layout: Layout,
    state: LabState,
    cluster: Cluster,
}

impl Lab {
    fn open(name: &str) -> Result<Self> {
        let layout = Layout::new(name)?;
        let state = layout.load()?;
        let cluster = Cluster::open(&layout, &state)?;
        Ok(Self {
            layout,
            state,
            cluster,
        })
    }

    fn is_kubernetes(&self) -> bool {
        matches!(self.state.control_plane, ControlPlane::Kubernetes { .. })
    }

    /// The lab's store (embedded mode only).
    fn store(&self) -> Result<&Store> {
        self.cluster.store()
    }

    fn kubelet(&self, bins: &Binaries) -> Kubelet<'_> {
        Kubelet {
            layout: &self.layout,
            weft: bins.weft.clone(),
            plugin: bins.plugin.clone(),
            kubeconfig: None,
        }
    }

    /// The node a new pod runs on, as the scheduler would pick it: its
    /// `nodeName`, else the node running the fewest pods.
    fn schedule(&self, pod: &Pod) -> Result<NodeRecord> {
        if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            return self
                .state
                .node(n)
                .cloned()
                .with_context(|| format!("nodeName {n} is not a node of this lab"));
        }
        let pods = self.pods()?;
        let load = |node: &NodeRecord| {
            pods.iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.name.as_str())
                })
                .count()
        };
        self.state
            .nodes
            .iter()
            .min_by_key(|n| load(n))
            .cloned()
            .context("the lab has no nodes")
    }

    /// Stops `pod` on its node and deletes it.
    fn stop_pod(&self, bins: &Binaries, pod: &Pod) -> Result<()> {
        self.kubelet(bins)
            .stop(&self.state, pod, crate::kubelet::STOP_GRACE)?;
        let (namespace, name) = objects::key(pod);
        self.store()?.delete("Pod", &namespace, &name)?;
        Ok(())
    }

    fn pods(&self) -> Result<Vec<Pod>> {
        self.cluster.list::<Pod>()
    }

    fn pod(&self, namespace: &str, name: &str) -> Result<Pod> {
        check_name("pod", namespace, name, names::dns1123_subdomain)?;
        self.cluster.get::<Pod>(namespace, name)?.with_context(|| {
            format!("pod {namespace}/{name} not found (see `weft lab get pods -A`)")
        })
    }

    fn node_netns(&self, node: &str) -> Result<PathBuf> {
        self.state.node(node).with_context(|| {
            format!(
                "node {node} is not part of lab {} (see `weft lab get nodes`)",
                self.state.name
            )
        })?;
        Ok(netns::named_path(&self.layout.node_ns(node)))
    }

    fn services(&self) -> Result<Vec<Service>> {
        self.cluster.list::<Service>()
    }

    fn pools(&self) -> Pools {
        Pools {
            service_cidr: self.state.service_cidr,
            lb_pool: self.state.lb_pool(),
            lb_reserved: self.state.lb_reserved(),
        }
    }

    /// The lab's lock; see [`Layout::lock`].
    fn lock(&self) -> Result<Flock<File>> {
        Ok(self.layout.lock()?)
    }

    /// Runs the EndpointSlice controller once.
    fn sync_slices(&self) -> Result<()> {
        let _lock = self.lock()?;
        endpointslices::sync(self.store()?).context("updating EndpointSlices")?;
        Ok(())
    }

    /// Syncs the EndpointSlices after `work`, whether it succeeded or not
    /// (what it did before failing must show in the slices too); the
    /// first error wins.
    fn then_sync<T>(&self, work: Result<T>) -> Result<T> {
        let synced = self.sync_slices();
        let value = work?;
        synced?;
        Ok(value)
    }

    /// Refuses a manifest whose objects live in a namespace that neither
    /// exists nor is created by the manifest itself, before anything of
    /// it is applied.
    fn check_namespaces(&self, resources: &[Resource]) -> Result<()> {
        let created: Vec<String> = resources
            .iter()
            .filter_map(|r| match r {
                Resource::Namespace(n) => n.metadata.name.clone(),
                _ => None,
            })
            .collect();
        let mut missing = Vec::new();
        for r in resources {
            let namespace = match r {
                Resource::Namespace(_) | Resource::ClusterNetworkPolicy(_) => continue,
                Resource::Pod(p) => objects::key(p).0,
                Resource::Deployment(d) => objects::key(d).0,
                Resource::Service(s) => objects::key(s).0,
                Resource::NetworkPolicy(np) => objects::key(np).0,
            };
            let exists = BUILT_IN_NAMESPACES.contains(&namespace.as_str())
                || created.contains(&namespace)
                || self.cluster.namespace_exists(&namespace)?;
            if !exists {
                missing.push(format!(
                    "{} (namespace {namespace:?} not found)",
                    r.describe()
                ));
            }
        }
        if !missing.is_empty() {
            bail!(
                "the manifest was not applied, nothing changed: create the namespace first \
                 (or add a Namespace to the manifest):\n  {}",
                missing.join("\n  ")
            );
        }
        Ok(())
    }

    /// The external client's namespace, created on first use in labs made
    /// before it existed.
    fn external_netns(&self) -> Result<PathBuf> {
        let name = self.layout.external_ns();
        let path = netns::named_path(&name);
        let _lock = self.lock()?;
        if !path.exists() {
            create_external(&self.layout, &self.state, &runtime()?)?;
            eprintln!(
                "lab {} predates the external client: created {} at {}",
                self.state.name,
                name,
                self.state.external_ip()
            );
        }
        Ok(path)
    }
}

/// `weft lab apply -f`: creates what the manifest describes; Services that
/// exist are updated, other objects that exist are left as they are.
pub fn apply(name: &str, text: &str, bins: &Binaries, report: Report<'_>) -> Result<()> {
    let lab = Lab::open(name)?;
    let resources = manifest::parse(text)?;
    lab.check_namespaces(&resources)?;
    if lab.is_kubernetes() {
        return kubernetes::apply(&lab, &resources, report);
    }
    lab.then_sync(apply_resources(&lab, resources, bins, report))
}

use weft_policy::model::BUILT_IN_NAMESPACES;

/// Applies `resources` in order. Validation already passed, so what can
/// still fail is the lab itself (a pool running out, a pod that cannot
/// start, the lab going down): the error then says which objects were
/// applied before it and which were not.
fn apply_resources(
    lab: &Lab,
    resources: Vec<Resource>,
    bins: &Binaries,
    report: Report<'_>,
) -> Result<()> {
    let total = resources.len();
    for (done, resource) in resources.iter().enumerate() {
        apply_resource(lab, resource, bins, report).with_context(|| {
            let before: Vec<String> = resources[..done].iter().map(Resource::describe).collect();
            let after: Vec<String> = resources[done + 1..]
                .iter()
                .map(Resource::describe)
                .collect();
            format!(
                "{} of {total} objects applied before {} failed ({}); not applied: {}",
                done,
                resource.describe(),
                if before.is_empty() {
                    "none".into()
                } else {
                    before.join(", ")
                },
                if after.is_empty() {
                    "none".into()
                } else {
                    after.join(", ")
                },
            )
        })?;
    }
    Ok(())
}

fn apply_resource(
    lab: &Lab,
    resource: &Resource,
    bins: &Binaries,
    report: Report<'_>,
) -> Result<()> {
    let kubelet = lab.kubelet(bins);
    let applied = |outcome| Event::Applied {
        object: resource.describe(),
        outcome,
    };
    let pods = match resource {
        Resource::Service(svc) => {
            return apply_service(lab, svc, report);
        }
        Resource::NetworkPolicy(np) => return apply_network_policy(lab, np, report),
        Resource::ClusterNetworkPolicy(cnp) => {
            return apply_cluster_network_policy(lab, cnp, report)
        }
        Resource::Namespace(ns) => {
            let ns_name = ns.metadata.name.clone().unwrap_or_default();
            if !lab.cluster.namespace_exists(&ns_name)? {
                // As the API server labels every namespace with its name
                // (what NetworkPolicy namespaceSelectors match on).
                let mut ns = ns.clone();
                ns.metadata
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(
                        weft_policy::model::NAMESPACE_NAME_LABEL.into(),
                        ns_name.clone(),
                    );
                lab.store()?.put_typed(&ns)?;
                report(applied(Outcome::Created));
            } else {
                report(applied(Outcome::Unchanged));
            }
            return Ok(());
        }
        Resource::Pod(p) => vec![p.clone()],
        Resource::Deployment(d) => {
            report(applied(Outcome::Applied));
            manifest::expand_deployment(d)
        }
    };
    for pod in pods {
        let (namespace, pod_name) = objects::key(&pod);
        // The existence check and the start happen under the lab lock,
        // so two applies of one manifest start each pod once.
        let _lock = lab.lock()?;
        if lab.cluster.get::<Pod>(&namespace, &pod_name)?.is_some() {
            report(Event::PodUnchanged { name: pod_name });
            continue;
        }
        let started = Instant::now();
        let node = lab.schedule(&pod)?;
        let pod = scheduled(pod, &namespace, &node.name);
        // Stored before its node starts it, as the API server and the
        // scheduler have it: the agent must know the pod (its labels)
        // when weft-cni asks it to protect the pod.
        lab.store()?.put_typed(&pod)?;
        let ran = kubelet.run(&node, pod, |pod| {
            Ok(lab.store()?.put_typed(pod).map(drop)?)
        });
        let pod = ran.inspect_err(|_| {
            if let Err(e) = lab.store().and_then(|s| Ok(s.delete("Pod", &namespace, &pod_name)?)) {
                tracing::warn!(error = %format!("{e:#}"), pod = %pod_name, "cannot remove the pod whose start failed");
            }
        })?;
        report(pod_created(&pod, started));
    }
    Ok(())
}

/// `pod` given its UID and bound to `node`, waiting to start.
fn scheduled(mut pod: Pod, namespace: &str, node: &str) -> Pod {
    pod.metadata.uid = Some(objects::random_uid());
    pod.metadata.namespace = Some(namespace.into());
    pod.spec.get_or_insert_with(Default::default).node_name = Some(node.into());
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
    pod
}

/// A pod that runs, `started` being when its apply began.
fn pod_created(pod: &Pod, started: Instant) -> Event {
    Event::PodCreated {
        name: objects::key(pod).1,
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        ip: pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default(),
        millis: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// Creates `applied`, or updates the stored Service of that name: the
/// allocators run under the controller lock, so two commands never hand
/// out the same address or port.
/// Stores a NetworkPolicy as given (the API server defaults nothing in it
/// that weft reads; `policyTypes` is defaulted where it is read).
fn apply_network_policy(lab: &Lab, applied: &NetworkPolicy, report: Report<'_>) -> Result<()> {
    let mut applied = applied.clone();
    let (namespace, name) = objects::key(&applied);
    applied.metadata.namespace = Some(namespace.clone());
    let object = format!("networkpolicy.networking.k8s.io/{name}");
    store_policy(lab, applied, |a, b| a.spec == b.spec, object, report)
}

/// Stores a ClusterNetworkPolicy as given, like a NetworkPolicy but
/// cluster-scoped: under no namespace, whatever the manifest said (which
/// validation refuses anyway).
fn apply_cluster_network_policy(
    lab: &Lab,
    applied: &ClusterNetworkPolicy,
    report: Report<'_>,
) -> Result<()> {
    let mut applied = applied.clone();
    applied.metadata.namespace = None;
    let name = applied.metadata.name.clone().unwrap_or_default();
    let object = format!("clusternetworkpolicy.policy.networking.k8s.io/{name}");
    store_policy(lab, applied, |a, b| a.spec == b.spec, object, report)
}

/// Stores a policy object unless the stored one has the same spec
/// (`same_spec`) and labels, keeping the stored one's identity, and
/// reports it as `object`.
fn store_policy<K>(
    lab: &Lab,
    mut applied: K,
    same_spec: fn(&K, &K) -> bool,
    object: String,
    report: Report<'_>,
) -> Result<()>
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + serde::Serialize + serde::de::DeserializeOwned,
{
    let meta = applied.metadata();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let _lock = lab.lock()?;
    let current = lab.store()?.get_typed::<K>(&namespace, &name)?;
    let outcome = match &current {
        None => Outcome::Created,
        Some(c) if same_spec(c, &applied) && c.metadata().labels == applied.metadata().labels => {
            Outcome::Unchanged
        }
        Some(_) => Outcome::Configured,
    };
    keep_identity(
        applied.metadata_mut(),
        current.as_ref().map(|c| c.metadata()),
    );
    if outcome != Outcome::Unchanged {
        lab.store()?.put_typed(&applied)?;
    }
    report(Event::Applied { object, outcome });
    Ok(())
}

/// An applied object's UID and creation time: the stored object's, or
/// new ones for a new object, as the API server keeps them.
fn keep_identity(meta: &mut ObjectMeta, current: Option<&ObjectMeta>) {
    meta.uid = current
        .and_then(|c| c.uid.clone())
        .or_else(|| Some(objects::random_uid()));
    meta.creation_timestamp = current
        .and_then(|c| c.creation_timestamp.clone())
        .or_else(|| Some(objects::now()));
}

fn apply_service(lab: &Lab, applied: &Service, report: Report<'_>) -> Result<()> {
    let mut applied = applied.clone();
    let id = objects::key(&applied);
    applied.metadata.namespace = Some(id.0.clone());
    let _lock = lab.lock()?;
    let (mine, others): (Vec<Service>, Vec<Service>) = lab
        .services()?
        .into_iter()
        .partition(|s| objects::key(s) == id);
    let current = mine.first();
    let mut admitted = services::admit(&applied, current, &others, &lab.pools())
        .with_context(|| format!("service/{} was not applied", id.1))?;
    let meta = &mut admitted.metadata;
    match current {
        Some(c) => {
            meta.uid = c.metadata.uid.clone();
            meta.creation_timestamp = c.metadata.creation_timestamp.clone();
        }
        None => {
            meta.uid = Some(objects::random_uid());
            meta.creation_timestamp = Some(objects::now());
        }
    }
    let outcome = match current {
        None => Outcome::Created,
        Some(c) => {
            let mut before = c.clone();
            before.metadata.resource_version = None;
            if before == admitted {
                Outcome::Unchanged
            } else {
                Outcome::Configured
            }
        }
    };
    if outcome != Outcome::Unchanged {
        lab.store()?.put_typed(&admitted)?;
    }
    report(Event::Applied {
        object: format!("service/{}", id.1),
        outcome,
    });
    Ok(())
}

/// `weft lab delete -f`: deletes the Services, NetworkPolicies,
/// ClusterNetworkPolicies, Pods (and Deployments' Pods) a manifest
/// describes.
pub fn delete_manifest(
    name: &str,
    text: &str,
    grace: Duration,
    bins: &Binaries,
    report: Report<'_>,
) -> Result<()> {
    let lab = Lab::open(name)?;
    let mut doomed = Deletions::default();
    for resource in manifest::parse(text)? {
        match &resource {
            Resource::Namespace(_) => {}
            Resource::Service(s) => doomed.services.push(objects::key(s)),
            Resource::NetworkPolicy(np) => doomed.policies.push(objects::key(np)),
            Resource::ClusterNetworkPolicy(cnp) => doomed
                .cluster_policies
                .push(cnp.metadata.name.clone().unwrap_or_default()),
            Resource::Pod(p) => doomed.pods.push(objects::key(p)),
            Resource::Deployment(d) if lab.is_kubernetes() => {
                doomed.deployments.push(objects::key(d))
            }
            Resource::Deployment(d) => doomed
                .pods
                .extend(manifest::expand_deployment(d).iter().map(objects::key)),
        }
    }
    if lab.is_kubernetes() {
        return kubernetes::delete(&lab, &doomed, grace, report);
    }
    let work = doomed
        .services
        .iter()
        .try_for_each(|(namespace, svc)| delete_service_in(&lab, namespace, svc, report))
        .and_then(|()| {
            doomed.policies.iter().try_for_each(|(namespace, policy)| {
                delete_network_policy_in(&lab, namespace, policy, report)
            })
        })
        .and_then(|()| {
            doomed
                .cluster_policies
                .iter()
                .try_for_each(|policy| delete_cluster_network_policy_in(&lab, policy, report))
        })
        .and_then(|()| delete_pods(&lab, bins, &doomed.pods, grace, report));
    lab.then_sync(work)
}

/// What one delete removes, each as (namespace, name) but the
/// cluster-scoped ClusterNetworkPolicies (by name).
#[derive(Debug, Default)]
pub(crate) struct Deletions {
    pub services: Vec<(String, String)>,
    pub policies: Vec<(String, String)>,
    pub cluster_policies: Vec<String>,
    pub deployments: Vec<(String, String)>,
    pub pods: Vec<(String, String)>,
}

/// `weft lab delete pod NAME`: with a grace period, the pod is first marked
/// as being deleted (its endpoints turn terminating) and its containers
/// keep running that long; then they are stopped, its network torn down
/// and the object removed.
pub fn delete_pod(
    name: &str,
    namespace: &str,
    pod: &str,
    grace: Duration,
    bins: &Binaries,
    report: Report<'_>,
) -> Result<()> {
    check_name("pod", namespace, pod, names::dns1123_subdomain)?;
    let lab = Lab::open(name)?;
    let key = (namespace.to_string(), pod.to_string());
    if lab.is_kubernetes() {
        let doomed = Deletions {
            pods: vec![key],
            ..Deletions::default()
        };
        return kubernetes::delete(&lab, &doomed, grace, report);
    }
    let work = delete_pods(&lab, bins, &[(namespace.into(), pod.into())], grace, report);
    lab.then_sync(work)
}

/// `weft lab delete service NAME`; its EndpointSlices go with it.
pub fn delete_service(name: &str, namespace: &str, svc: &str, report: Report<'_>) -> Result<()> {
    check_name("service", namespace, svc, names::dns1035_label)?;
    let lab = Lab::open(name)?;
    if lab.is_kubernetes() {
        let doomed = Deletions {
            services: vec![(namespace.to_string(), svc.to_string())],
            ..Deletions::default()
        };
        return kubernetes::delete(&lab, &doomed, Duration::ZERO, report);
    }
    let work = delete_service_in(&lab, namespace, svc, report);
    lab.then_sync(work)
}

/// `weft lab delete networkpolicy NAME`.
pub fn delete_network_policy(
    name: &str,
    namespace: &str,
    policy: &str,
    report: Report<'_>,
) -> Result<()> {
    check_name("networkpolicy", namespace, policy, names::dns1123_subdomain)?;
    let lab = Lab::open(name)?;
    if lab.is_kubernetes() {
        let doomed = Deletions {
            policies: vec![(namespace.to_string(), policy.to_string())],
            ..Deletions::default()
        };
        return kubernetes::delete(&lab, &doomed, Duration::ZERO, report);
    }
    delete_network_policy_in(&lab, namespace, policy, report)
}

fn delete_network_policy_in(
    lab: &Lab,
    namespace: &str,
    policy: &str,
    report: Report<'_>,
) -> Result<()> {
    let found = lab
        .store()?
        .delete(NetworkPolicy::KIND, namespace, policy)?
        .is_some();
    report(Event::Deleted {
        object: format!("networkpolicy/{policy}"),
        found,
    });
    Ok(())
}

/// `weft lab delete clusternetworkpolicy NAME` (cluster-scoped: no
/// namespace).
pub fn delete_cluster_network_policy(name: &str, policy: &str, report: Report<'_>) -> Result<()> {
    names::dns1123_subdomain(policy).map_err(|reason| {
        anyhow::anyhow!("clusternetworkpolicy name {policy:?} is invalid: {reason}")
    })?;
    let lab = Lab::open(name)?;
    if lab.is_kubernetes() {
        let doomed = Deletions {
            cluster_policies: vec![policy.to_string()],
            ..Deletions::default()
        };
        return kubernetes::delete(&lab, &doomed, Duration::ZERO, report);
    }
    delete_cluster_network_policy_in(&lab, policy, report)
}

fn delete_cluster_network_policy_in(lab: &Lab, policy: &str, report: Report<'_>) -> Result<()> {
    let found = lab
        .store()?
        .delete(ClusterNetworkPolicy::KIND, "", policy)?
        .is_some();
    report(Event::Deleted {
        object: format!("clusternetworkpolicy/{policy}"),
        found,
    });
    Ok(())
}

fn delete_service_in(lab: &Lab, namespace: &str, svc: &str, report: Report<'_>) -> Result<()> {
    let found = lab
        .store()?
        .delete(Service::KIND, namespace, svc)?
        .is_some();
    report(Event::Deleted {
        object: format!("service/{svc}"),
        found,
    });
    Ok(())
}

/// Deletes pods (namespace, name) together: one grace period for all.
fn delete_pods(
    lab: &Lab,
    bins: &Binaries,
    keys: &[(String, String)],
    grace: Duration,
    report: Report<'_>,
) -> Result<()> {
    let mut found = Vec::new();
    for (namespace, pod) in keys {
        match lab.cluster.get::<Pod>(namespace, pod)? {
            Some(p) => found.push(p),
            None => report(Event::Deleted {
                object: format!("pod/{pod}"),
                found: false,
            }),
        }
    }
    if !grace.is_zero() && !found.is_empty() {
        for pod in &mut found {
            objects::mark_deleted(&mut pod.metadata, grace);
            lab.store()?.put_typed(pod)?;
            report(Event::PodTerminating {
                name: objects::key(pod).1,
                grace_seconds: grace.as_secs(),
            });
        }
        lab.sync_slices()?;
        std::thread::sleep(grace);
    }
    for pod in &found {
        // Under the lock: a container's supervisor never writes the status
        // of a pod being removed back into the store.
        let _lock = lab.lock()?;
        lab.stop_pod(bins, pod)?;
        report(Event::Deleted {
            object: format!("pod/{}", objects::key(pod).1),
            found: true,
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
}

/// `weft lab get nodes`: the Node objects (for `-o json`) and the table's
/// rows.
pub fn get_nodes(name: &str) -> Result<(Vec<Node>, Vec<NodeRow>)> {
    let lab = Lab::open(name)?;
    let nodes = lab.cluster.list::<Node>()?;
    let rows = lab
        .state
        .nodes
        .iter()
        .map(|record| {
            let node = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(record.name.as_str()));
            NodeRow {
                name: record.name.clone(),
                ready: agents::is_running(&lab.layout, &record.name, record.agent_pid)
                    && (!lab.is_kubernetes() || node.is_some_and(is_node_ready)),
                ip: record.ip.to_string(),
                pod_cidr: match lab.state.subnet_store {
                    // The lease the node's agent holds, not node IPAM's.
                    layout::SubnetStore::Etcd => {
                        agents::held_subnet(&lab.layout.node_dir(&record.name))
                            .map(|subnet| subnet.to_string())
                    }
                    layout::SubnetStore::Cluster => {
                        node.and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
                    }
                },
                backend: lab.state.backend.to_string(),
            }
        })
        .collect();
    Ok((nodes, rows))
}

/// Whether the Node's Ready condition is True (its kubelet reports it).
fn is_node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|all| all.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `weft lab get pods`: the Pod objects (for `-o json`) and the table's
/// rows.
pub fn get_pods(name: &str, namespace: Option<&str>) -> Result<(Vec<Pod>, Vec<PodRow>)> {
    let lab = Lab::open(name)?;
    let pods: Vec<Pod> = lab
        .pods()?
        .into_iter()
        .filter(|p| namespace.is_none_or(|ns| objects::key(p).0 == ns))
        .collect();
    let rows = pods
        .iter()
        .map(|pod| {
            let (namespace, name) = objects::key(pod);
            let status = pod.status.clone().unwrap_or_default();
            let containers = status.container_statuses.clone().unwrap_or_default();
            PodRow {
                namespace,
                name,
                ready: containers.iter().filter(|c| c.ready).count(),
                containers: containers.len(),
                status: crate::supervisor::display_status(pod).to_string(),
                restarts: crate::supervisor::restarts(pod),
                ip: status.pod_ip.unwrap_or_default(),
                node: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    Ok((pods, rows))
}

/// A list of objects as `kubectl get -o json` prints it.
pub fn list_json<K: serde::Serialize>(kind: &str, items: &[K]) -> Result<String> {
    Ok(serde_json::to_string_pretty(
        &json!({"apiVersion": "v1", "kind": kind, "items": items}),
    )?)
}

/// Where `weft lab exec` runs its command.
pub enum ExecTarget {
    Pod {
        namespace: String,
        name: String,
    },
    Node(String),
    /// The client outside the cluster.
    External,
}

/// `weft lab exec`: runs `cmd` in the pod's (or node's, or the external
/// client's) network namespace with the caller's terminal; returns its
/// exit code.
pub fn exec(name: &str, target: &ExecTarget, cmd: &[String]) -> Result<i32> {
    let lab = Lab::open(name)?;
    let path = match target {
        ExecTarget::Node(node) => lab.node_netns(node)?,
        ExecTarget::Pod {
            namespace,
            name: pod,
        } => pod_netns(&lab.layout, &lab.pod(namespace, pod)?)?,
        ExecTarget::External => lab.external_netns()?,
    };
    let (program, args) = cmd.split_first().context("give a command after --")?;
    let status = NetNs::open(&path)?
        .command(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    Ok(status.code().unwrap_or(128))
}

fn pod_netns(layout: &Layout, pod: &Pod) -> Result<PathBuf> {
    crate::kubelet::netns_of(layout, pod)
}

/// `weft lab logs`.
pub fn logs(name: &str, namespace: &str, pod: &str, container: Option<&str>) -> Result<String> {
    let lab = Lab::open(name)?;
    let p = lab.pod(namespace, pod)?;
    let first = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let container = container.map(String::from).unwrap_or(first);
    let declared = p
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .any(|c| c.name == container);
    if !declared {
        bail!("pod {namespace}/{pod} has no container {container:?}");
    }
    let path = lab
        .layout
        .pod_dir(namespace, pod)?
        .join(format!("{container}.log"));
    std::fs::read_to_string(&path)
        .with_context(|| format!("no logs for container {container} of {namespace}/{pod}"))
}

/// `weft lab node add|remove|stop|start`.
pub enum NodeAction {
    /// A node whose pod network is this.
    Add(layout::Network),
    Remove,
    Stop,
    Start,
}

pub fn node(
    name: &str,
    node: &str,
    action: NodeAction,
    bins: &Binaries,
    report: Report<'_>,
) -> Result<()> {
    layout::check_node_name(node)?;
    let mut lab = Lab::open(name)?;
    match action {
        NodeAction::Add(network) => {
            if network == layout::Network::Flannel && !lab.is_kubernetes() {
                bail!("a flannel node needs a lab with --control-plane kubernetes");
            }
            let rt = runtime()?;
            add_node_to(
                &lab.layout,
                &mut lab.state,
                node,
                network,
                bins,
                &rt,
                report,
            )?;
            wait_ready(&lab.layout, &lab.state, Duration::from_secs(30))?;
            if lab.is_kubernetes() {
                kubernetes::wait_schedulable(&lab.layout, &lab.state)?;
            }
            report(Event::NodeAdded { name: node.into() });
        }
        NodeAction::Remove if lab.is_kubernetes() => remove_node(&mut lab, node, bins, report)?,
        NodeAction::Remove => {
            let work = remove_node(&mut lab, node, bins, report);
            lab.then_sync(work)?;
        }
        NodeAction::Stop => {
            let record = lab
                .state
                .nodes
                .iter_mut()
                .find(|n| n.name == node)
                .with_context(|| format!("no node {node}"))?;
            if let Some(pid) = record.agent_pid.take() {
                procs::crash(pid, &agents::owner(&lab.layout, node));
            }
            if let Some(pid) = record.kube_proxy_pid.take() {
                procs::crash(pid, &kube_proxies::owner(&lab.layout, node));
            }
            lab.layout.save(&lab.state)?;
            report(Event::AgentKilled { node: node.into() });
        }
        NodeAction::Start => {
            let ns = NetNs::open(netns::named_path(&lab.layout.node_ns(node)))?;
            let current = lab
                .state
                .node(node)
                .with_context(|| format!("no node {node}"))?
                .agent_pid;
            if agents::is_running(&lab.layout, node, current) {
                bail!("the agent of {node} is already running");
            }
            let mut record = lab
                .state
                .node(node)
                .cloned()
                .context("the node is recorded")?;
            start_network(&lab.layout, &lab.state, &mut record, &ns, bins)?;
            let pid = record.agent_pid.unwrap_or_default();
            if let Some(r) = lab.state.nodes.iter_mut().find(|n| n.name == node) {
                *r = record;
            }
            lab.layout.save(&lab.state)?;
            report(Event::AgentStarted {
                node: node.into(),
                pid,
            });
        }
    }
    Ok(())
}

/// Deletes the node's pods, stops its agent, releases its lease and
/// removes its namespace.
fn remove_node(lab: &mut Lab, node: &str, bins: &Binaries, report: Report<'_>) -> Result<()> {
    let record = lab.state.node(node).cloned().with_context(|| {
        format!(
            "node {node} is not part of lab {} (see `weft lab get nodes`)",
            lab.state.name
        )
    })?;
    if lab.is_kubernetes() {
        // The Node goes first, so the scheduler binds nothing more to it;
        // then its kubelet, its pods' sandboxes and objects.
        kubernetes::forget_node(lab, node)?;
        if let Some(pid) = record.kubelet_pid {
            procs::stop(
                pid,
                &node_kubelet::owner(&lab.layout, node),
                Duration::from_secs(3),
            );
        }
        let pods = pods_on(lab, node)?;
        for pod in &pods {
            lab.kubelet(bins)
                .stop(&lab.state, pod, crate::kubelet::STOP_GRACE)?;
        }
        kubernetes::force_delete(lab, &pods)?;
    } else {
        for pod in &pods_on(lab, node)? {
            let _lock = lab.lock()?;
            lab.stop_pod(bins, pod)?;
        }
        lab.store()?.release_lease("weft", node)?;
        lab.store()?.delete("Node", "", node)?;
    }
    if let Some(pid) = record.agent_pid {
        agents::stop(&lab.layout, node, pid);
    }
    if lab.state.subnet_store == layout::SubnetStore::Etcd {
        let dir = lab.layout.node_dir(node);
        flannel::release_etcd_lease(&lab.layout, &dir)?;
    }
    netns::delete_named(&lab.layout.node_ns(node))?;
    lab.state.nodes.retain(|n| n.name != node);
    lab.layout.save(&lab.state)?;
    lab.layout.remove(&lab.layout.node_dir(node))?;
    report(Event::NodeRemoved { name: node.into() });
    Ok(())
}

/// The pods bound to `node`.
fn pods_on(lab: &Lab, node: &str) -> Result<Vec<Pod>> {
    Ok(lab
        .pods()?
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .collect())
}

/// `weft lab kubeconfig`: the admin kubeconfig of a Kubernetes-mode lab.
pub fn kubeconfig(name: &str) -> Result<PathBuf> {
    let layout = Layout::new(name)?;
    let state = layout.load()?;
    if state.control_plane == ControlPlane::Embedded {
        bail!(
            "lab {name} has the embedded control plane, which kubectl cannot drive; \
             create one with `weft lab up --control-plane kubernetes`"
        );
    }
    Ok(kube_control_plane::admin_kubeconfig(&layout))
}

/// `weft lab status`: every lab, its nodes and pods.
pub fn status() -> Vec<LabStatus> {
    layout::labs()
        .into_iter()
        .map(|name| {
            let Ok(lab) = Lab::open(&name) else {
                return LabStatus::Damaged { name };
            };
            LabStatus::Running {
                control_plane: if lab.is_kubernetes() {
                    "kubernetes"
                } else {
                    "embedded"
                }
                .into(),
                backend: lab.state.backend.to_string(),
                pod_cidr: lab.state.pod_cidr.to_string(),
                service_cidr: lab.state.service_cidr.to_string(),
                agents_running: lab
                    .state
                    .nodes
                    .iter()
                    .filter(|n| agents::is_running(&lab.layout, &n.name, n.agent_pid))
                    .count(),
                nodes: lab.state.nodes.len(),
                pods: lab.pods().map(|p| p.len()).unwrap_or(0),
                services: lab.services().map(|s| s.len()).unwrap_or(0),
                name,
            }
        })
        .collect()
}
