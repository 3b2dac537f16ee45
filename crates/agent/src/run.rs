//! The node agent's life, in two parts. [`bootstrap`]: read the network
//! config and the underlay, lease a subnet, set up the backend device, hand
//! the subnet to the CNI plugin, publish the node. Then [`Agent::run`]:
//! follow every node's lease and converge the datapath on each burst of
//! changes and every resync tick (which also repairs drift), renewing the
//! lease before it expires.
//!
//! Cluster state comes only through the seam ([`weft_cluster`]); where it
//! is kept is the caller's choice. Stopping the agent leaves the datapath
//! and the lease in place, so a restart neither interrupts pod traffic nor
//! changes the node's subnet.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use serde_json::json;
use weft_cluster::cache::Cache;
use weft_cluster::flannel;
use weft_cluster::leases::{BackendData, LeaseRequest, NodePublication, SubnetRange};
use weft_cluster::{ClusterState, Event, SubnetLease};
use weft_datapath::netlink::{format_mac, Link, Route, VxlanSpec};
use weft_datapath::{sysctl, Netlink};

use crate::backend::{self, Desired, LocalNode, Peer};
use crate::config::{Backend, NetConf};
use crate::health::{self, Health};
use crate::proxy::{NodePorts, ProxyOptions};
use crate::reconcile::Reconciler;
use crate::{files, masq, subnets, takeover};
use weft_proxy::plan::NodePortAddresses;

/// Everything `weft agent` is told on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub node: String,
    /// The network config, read with [`read_net_conf`].
    pub net_conf: NetConf,
    pub iface: String,
    pub network: String,
    pub subnet_file: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub ipam_dir: PathBuf,
    /// host-local's reservations of the plugin that wired the node's pods
    /// before weft, which weft-cni honours.
    pub host_local_dir: Option<PathBuf>,
    /// Where weft-cni asks the agent to protect a new pod before it
    /// starts; `None`: pods start without waiting for their policy.
    pub policy_socket: Option<PathBuf>,
    pub health: SocketAddr,
    pub lease_ttl: Duration,
    pub resync: Duration,
    /// `/healthz` fails when the loop has not come round for this long.
    pub health_stale_after: Duration,
    /// Run the Service proxy (kube-proxy's job) in this agent.
    pub proxy: bool,
    /// Without the proxy, still announce LoadBalancer addresses (weft
    /// allocates them beside kube-proxy).
    pub announce_load_balancers: bool,
    /// Where the proxy's kube-proxy-style health endpoint listens.
    pub proxy_health: Option<SocketAddr>,
    /// NodePorts answer on the node's primary address only (kube-proxy's
    /// default), or on every local address.
    pub nodeport_addresses: NodePortsOn,
    /// Node heartbeat period (LoadBalancer failover takes ~3 of these).
    pub heartbeat: Duration,
    /// How often the Service proxy checks its table for drift.
    pub proxy_drift_check: Duration,
    /// How often the Service proxy rebuilds its table regardless.
    pub proxy_full_resync: Duration,
    /// Where Services' externalIPs may lie (empty: anywhere).
    pub external_ip_cidrs: Vec<ipnet::Ipv4Net>,
    /// The `loadBalancerClass` this agent allocates and announces
    /// addresses for (`None`: Services without one).
    pub load_balancer_class: Option<String>,
}

/// `--nodeport-addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortsOn {
    /// The underlay address (the one in the node's lease).
    Primary,
    /// Every local address but loopback.
    All,
    /// The local addresses (but loopback) in these CIDRs.
    Cidrs(Vec<ipnet::Ipv4Net>),
}

/// The parts of the node that do not change while the agent runs.
struct NodeState {
    local: LocalNode,
    conf: NetConf,
    device: Option<u32>,
    /// The VXLAN device's name and MAC (announced in the lease).
    vxlan_device: Option<(String, Vec<u8>)>,
    mtu: u32,
}

/// Why the agent is not ready while it starts: on Kubernetes it may wait
/// a long time for node IPAM.
const STARTING: &str = "starting: waiting for this node's subnet from the cluster (on Kubernetes: \
    the Node's spec.podCIDR, set by kube-controller-manager --allocate-node-cidrs)";

/// Runs the agent until `shutdown`. `/healthz` and `/readyz` answer from
/// the start (not ready, with the reason, until the first pass).
pub async fn run<C: ClusterState>(
    opts: Options,
    cluster: C,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let health_state = Arc::new(Health::default());
    health_state.set_unready(STARTING.into());
    health_state.beat();
    let server = tokio::spawn(health::serve(
        opts.health,
        health_state.clone(),
        opts.health_stale_after,
    ));
    // Alive while it waits: a kubelet would restart an agent that only
    // waits for the cluster, which helps nobody.
    let mut beat = tokio::time::interval(opts.resync);
    let starting = bootstrap(opts, cluster);
    tokio::pin!(starting);
    let agent = loop {
        tokio::select! {
            agent = &mut starting => break agent,
            _ = beat.tick() => health_state.beat(),
        }
    };
    let outcome = match agent {
        Ok(agent) => agent.run(health_state, shutdown).await,
        Err(e) => Err(e),
    };
    server.abort();
    outcome
}

/// A bootstrapped agent: its subnet leased, its device up, its files
/// written and its node published.
pub struct Agent<C> {
    opts: Options,
    cluster: C,
    netlink: Netlink,
    node: NodeState,
    /// The cluster network, for the Service proxy.
    network: IpNet,
    /// What the last successful pass left in the kernel (`None`: unknown,
    /// read it).
    applied: Option<Desired>,
}

/// Reads net-conf.json and checks that this agent supports it; done
/// before anything else (the cluster store included) is opened.
pub fn read_net_conf(path: &Path) -> Result<NetConf> {
    supported(NetConf::read(path)?)
}

/// `conf` if this agent supports it.
pub fn supported(conf: NetConf) -> Result<NetConf> {
    if conf.ipv4.is_none() {
        bail!("net-conf.json: this agent needs an IPv4 Network (IPv6-only clusters are not supported yet)");
    }
    if conf.ipv6.is_some() {
        bail!("net-conf.json: EnableIPv6 is not supported by the agent yet; remove IPv6Network/EnableIPv6 (weft-cni itself is dual-stack)");
    }
    Ok(conf)
}

/// The node's underlay: the interface named `iface`, or with none named
/// the one of the default route (as flanneld chooses).
async fn underlay(netlink: &Netlink, iface: &str) -> Result<Link> {
    if !iface.is_empty() {
        return netlink.link(iface).await?.with_context(|| {
            format!("interface {iface} not found; pass the node's underlay interface with --iface")
        });
    }
    let routes = netlink.routes(false).await?;
    let index = default_route_interface(&routes).context(
        "this node has no IPv4 default route to find its underlay interface by; pass it with --iface",
    )?;
    let links = netlink.links().await?;
    let link = links.into_iter().find(|l| l.index == index);
    let link =
        link.context("the default route's interface went away; pass the underlay with --iface")?;
    tracing::info!(iface = %link.name, "underlay interface: the default route's");
    Ok(link)
}

/// The interface of the main table's preferred IPv4 default route.
fn default_route_interface(routes: &[Route]) -> Option<u32> {
    const MAIN_TABLE: u32 = 254;
    routes
        .iter()
        .filter(|r| r.dst.is_none_or(|d| d.prefix_len() == 0))
        .filter(|r| r.table.unwrap_or(MAIN_TABLE) == MAIN_TABLE)
        .filter_map(|r| Some((r.priority.unwrap_or(0), r.oif?)))
        .min()
        .map(|(_, oif)| oif)
}

/// Everything before the loop; an error here means the agent cannot start.
pub async fn bootstrap<C: ClusterState>(mut opts: Options, cluster: C) -> Result<Agent<C>> {
    let conf = opts.net_conf.clone();
    let v4 = conf
        .ipv4
        .clone()
        .context("net-conf.json has no IPv4 Network (read it with read_net_conf)")?;
    let netlink = Netlink::connect()?;
    let underlay = underlay(&netlink, &opts.iface).await?;
    opts.iface = underlay.name.clone();
    let addrs = netlink.addresses(underlay.index).await?;
    let node_addrs: Vec<IpAddr> = addrs.iter().map(IpNet::addr).collect();
    conf.check_node_addresses(&opts.iface, &node_addrs)?;
    let public: IpNet = addrs
        .iter()
        .copied()
        .find(|a| a.addr().is_ipv4())
        .with_context(|| {
            format!(
                "interface {} has no IPv4 address to use as the node's public IP",
                opts.iface
            )
        })?;

    let mut vxlan_device = None;
    let (backend_data, mtu) = match &conf.backend {
        Backend::Vxlan { vni, mtu, .. } => {
            let own = netlink
                .link(&crate::config::vxlan_device_name(*vni))
                .await?;
            let flannels = match takeover::flannel_device(*vni) {
                Some(name) => netlink.link(&name).await?,
                None => None,
            };
            let derived = backend::vxlan::vtep_mac(&opts.node, *vni);
            let (name, mac) =
                takeover::vxlan_device(own.as_ref(), flannels.as_ref(), *vni, derived);
            let vtep_mac = format_mac(&mac);
            vxlan_device = Some((name, mac));
            let mtu = mtu.unwrap_or(underlay.mtu.unwrap_or(1500) - backend::vxlan::OVERHEAD);
            let data = BackendData::Vxlan {
                vni: *vni,
                vtep_mac,
            };
            (data, mtu)
        }
        Backend::HostGw { mtu } => (
            BackendData::HostGw,
            mtu.unwrap_or(underlay.mtu.unwrap_or(1500)),
        ),
    };
    let request = LeaseRequest {
        node: opts.node.clone(),
        public_ip: public.addr(),
        backend: match &backend_data {
            BackendData::Vxlan { vtep_mac, .. } => json!({"vtepMAC": vtep_mac}),
            BackendData::HostGw => json!({}),
        },
        backend_data: backend_data.clone(),
        ttl: opts.lease_ttl,
        allowed: SubnetRange {
            min: v4.subnet_min,
            max: v4.subnet_max,
        },
    };
    let lease = cluster
        .acquire(&request, |taken| subnets::choose(&v4, taken))
        .await?;
    // Where the cluster chose the subnet (Kubernetes' node IPAM), it must
    // have net-conf.json's size.
    if let IpNet::V4(subnet) = lease.subnet {
        flannel::check_subnet_len(subnet, v4.subnet_len).map_err(anyhow::Error::msg)?;
    }
    tracing::info!(node = %opts.node, subnet = %lease.subnet, public_ip = %public.addr(), backend = conf.backend.type_name(), "leased subnet");

    let local = LocalNode {
        name: opts.node.clone(),
        subnet: lease.subnet,
        public_ip: public.addr(),
        underlay_index: underlay.index,
        underlay_networks: addrs.iter().map(|a| a.trunc()).collect(),
    };
    let mut node = NodeState {
        local,
        conf,
        device: None,
        vxlan_device,
        mtu,
    };
    ensure_node_datapath(&netlink, &mut node).await?;
    takeover::remove_flannel_tables().context("removing flanneld's nftables tables")?;
    ensure_cni_files(&opts, &node)?;
    takeover::remove_flannel_cni_config(&opts.cni_conf_dir).with_context(|| {
        format!(
            "removing flannel's CNI configuration from {}",
            opts.cni_conf_dir.display()
        )
    })?;
    cluster
        .publish_node(&NodePublication {
            node: node.local.name.clone(),
            subnet: node.local.subnet,
            public_ip: node.local.public_ip,
            backend: backend_data,
        })
        .await?;
    Ok(Agent {
        opts,
        cluster,
        netlink,
        node,
        network: v4.network,
        applied: None,
    })
}

impl<C: ClusterState> Agent<C> {
    /// The loop: converge on lease changes and resync ticks until
    /// `shutdown`, reporting on `health_state`; the Service proxy runs
    /// beside it on its own thread.
    pub async fn run(
        mut self,
        health_state: Arc<Health>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        // Without the proxy (kube-proxy programs Services) the loop still
        // runs when it must announce LoadBalancer addresses.
        if self.opts.proxy || self.opts.announce_load_balancers {
            self.spawn_proxy(health_state.clone())?;
        }
        crate::policy::spawn(
            self.cluster.clone(),
            self.opts.node.clone(),
            self.opts.policy_socket.clone(),
        )
        .context("starting NetworkPolicy enforcement")?;
        let mut leases = self.cluster.watch_leases();
        let mut known = lease_cache();
        let mut resync = tokio::time::interval(self.opts.resync);
        let mut last_renew = Instant::now();
        let mut problem = Problem::default();
        // A tick's pass reads the kernel and repairs drift; a lease
        // change's pass only applies the difference.
        let mut full = true;
        tokio::pin!(shutdown);
        loop {
            let converged = known.is_synced() && self.converge_logged(&known, full).await;
            let files_written = restore_cni_files(&self.opts, &self.node);
            match problem.check(self.cluster.problem()) {
                Some(problem) => health_state.set_unready(problem),
                None if converged && files_written => health_state.set_ready(),
                None => {}
            }
            health_state.beat();
            if last_renew.elapsed() >= self.opts.lease_ttl / 2 {
                self.cluster
                    .renew(&self.opts.node, self.opts.lease_ttl)
                    .await?;
                last_renew = Instant::now();
            }
            full = tokio::select! {
                event = leases.next() => {
                    take_lease_event(&mut known, event);
                    // A burst (nodes joining) converges once, not per lease.
                    while let Some(event) = leases.next().now_or_never() {
                        take_lease_event(&mut known, event);
                    }
                    false
                }
                _ = resync.tick() => true,
                _ = &mut shutdown => break,
            };
        }
        tracing::info!("stopping; the datapath and the lease stay in place");
        Ok(())
    }

    fn spawn_proxy(&self, health: Arc<Health>) -> Result<()> {
        if let Some(addr) = self.opts.proxy_health.filter(|_| self.opts.proxy) {
            let served = health.clone();
            tokio::spawn(async move {
                if let Err(e) = health::serve_proxy(addr, served).await {
                    tracing::warn!(%addr, error = %e, "the proxy's health endpoint is not served");
                }
            });
        }
        crate::proxy::spawn(
            self.cluster.clone(),
            ProxyOptions {
                node: self.opts.node.clone(),
                iface: self.opts.iface.clone(),
                cluster_cidrs: match self.network {
                    IpNet::V4(net) => vec![net],
                    IpNet::V6(_) => Vec::new(),
                },
                drift_check: self.opts.proxy_drift_check,
                heartbeat: self.opts.heartbeat,
                full_resync: self.opts.proxy_full_resync,
                health,
                program: self.opts.proxy,
                nodeport_addresses: match (&self.opts.nodeport_addresses, self.node.local.public_ip)
                {
                    (NodePortsOn::Primary, IpAddr::V4(ip)) => {
                        NodePorts::Fixed(NodePortAddresses::Only(vec![ip]))
                    }
                    (NodePortsOn::Primary, IpAddr::V6(_)) => {
                        NodePorts::Fixed(NodePortAddresses::Only(Vec::new()))
                    }
                    (NodePortsOn::All, _) => NodePorts::Fixed(NodePortAddresses::EveryLocal),
                    (NodePortsOn::Cidrs(cidrs), _) => NodePorts::InCidrs(cidrs.clone()),
                },
                reserved_ports: [self.opts.health.port()]
                    .into_iter()
                    .chain(self.opts.proxy_health.map(|a| a.port()))
                    .collect(),
                external_ip_cidrs: self.opts.external_ip_cidrs.clone(),
                load_balancer_class: self.opts.load_balancer_class.clone(),
            },
        )
        .context("starting the Service proxy thread")?;
        Ok(())
    }

    /// [`Agent::converge`], its outcome logged; whether it succeeded.
    async fn converge_logged(&mut self, known: &Cache<SubnetLease>, full: bool) -> bool {
        match self.converge(known, full).await {
            Ok(changes) => {
                if changes > 0 {
                    tracing::info!(changes, "datapath converged");
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "converging failed; retrying at the next tick");
                false
            }
        }
    }

    /// One pass: the node's device and the routes, neighbours and FDB
    /// entries to every live peer. A `full` pass (or one after a failure)
    /// checks the device and reads the kernel's tables; the others apply
    /// what changed since the last pass.
    async fn converge(&mut self, known: &Cache<SubnetLease>, full: bool) -> Result<usize> {
        let applied = if full { None } else { self.applied.take() };
        if applied.is_none() {
            ensure_node_datapath(&self.netlink, &mut self.node).await?;
        }
        let peers = peers(known.values(), &self.opts.node, SystemTime::now());
        let node = &self.node;
        let desired: Desired = match &node.conf.backend {
            Backend::Vxlan { direct_routing, .. } => {
                let device = node.device.context("the vxlan device is missing")?;
                backend::vxlan::plan(&node.local, &peers, device, *direct_routing)?
            }
            Backend::HostGw { .. } => backend::hostgw::plan(&node.local, &peers)?,
        };
        let reconciler = Reconciler {
            netlink: &self.netlink,
            device: node.device,
        };
        let changes = match &applied {
            Some(applied) => reconciler.apply_delta(&desired, applied).await?,
            None => reconciler.sync(&desired).await?,
        };
        self.applied = Some(desired);
        Ok(changes.count())
    }
}

/// Every node's lease, by node.
fn lease_cache() -> Cache<SubnetLease> {
    Cache::new(|lease: &SubnetLease| lease.node.clone())
}

/// Takes one item of the lease watch into `known`; a watch error is logged
/// (the watch retries by itself).
fn take_lease_event(
    known: &mut Cache<SubnetLease>,
    event: Option<Result<Event<SubnetLease>, weft_cluster::ClusterError>>,
) {
    match event {
        Some(Ok(event)) => {
            known.apply(event);
        }
        Some(Err(e)) => tracing::warn!(error = %e, "watching subnet leases failed; retrying"),
        None => tracing::error!("the subnet lease watch ended"),
    }
}

/// The other nodes with a live lease at `now`: the mesh to converge to.
/// Expired leases drop out without anyone writing.
fn peers<'a>(
    leases: impl IntoIterator<Item = &'a SubnetLease>,
    me: &str,
    now: SystemTime,
) -> Vec<Peer> {
    leases
        .into_iter()
        .filter(|lease| lease.node != me && lease.is_live(now))
        .map(peer_of)
        .collect()
}

/// Remembers the cluster source's last problem, so it is logged once when
/// it appears; the agent goes on with what it has (the datapath stays, pod
/// traffic flows) and stays unready with the reason.
#[derive(Default)]
struct Problem {
    reported: Option<String>,
}

impl Problem {
    fn check(&mut self, problem: Option<String>) -> Option<String> {
        if problem != self.reported {
            if let Some(problem) = &problem {
                tracing::error!(error = %problem, "the cluster state source has a problem");
            }
            self.reported = problem.clone();
        }
        problem
    }
}

/// The backend device and its address, forwarding and masquerade: all
/// re-checked on every pass, so a deleted device comes back.
async fn ensure_node_datapath(netlink: &Netlink, node: &mut NodeState) -> Result<()> {
    sysctl::ensure("net/ipv4/ip_forward", "1")?;
    if let Backend::Vxlan { vni, port, gbp, .. } = &node.conf.backend {
        let (name, mac) = node
            .vxlan_device
            .clone()
            .context("a VXLAN node has its device chosen")?;
        let device = netlink
            .ensure_vxlan(&VxlanSpec {
                name,
                vni: *vni,
                port: *port,
                local: node.local.public_ip,
                underlay: Some(node.local.underlay_index),
                gbp: *gbp,
                mtu: Some(node.mtu),
                mac,
            })
            .await?;
        if device.name != crate::config::vxlan_device_name(*vni) && !takeover::is_adopted(&device) {
            netlink
                .set_alias(device.index, takeover::ADOPTED_ALIAS)
                .await?;
        }
        let vtep = IpNet::new(node.local.subnet.network(), 32)?;
        netlink.add_address(device.index, vtep).await?;
        node.device = Some(device.index);
    }
    let networks: Vec<IpNet> = node.conf.ipv4.iter().map(|f| f.network).collect();
    masq::ensure(&networks)?;
    Ok(())
}

/// Puts back the CNI files if they were deleted or changed; whether they
/// are as they must be. Apart from [`Agent::converge`], so that neither failing
/// keeps the other from repairing.
fn restore_cni_files(opts: &Options, node: &NodeState) -> bool {
    match ensure_cni_files(opts, node) {
        Ok(restored) => {
            for path in &restored {
                tracing::warn!(path = %path.display(), "restored a CNI file that was deleted or changed");
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "writing the CNI files failed; retrying at the next tick");
            false
        }
    }
}

fn peer_of(lease: &SubnetLease) -> Peer {
    let vtep_mac = lease.backend["vtepMAC"].as_str().and_then(parse_mac);
    Peer {
        name: lease.node.clone(),
        subnet: lease.subnet,
        public_ip: lease.public_ip,
        vtep_mac,
    }
}

fn parse_mac(text: &str) -> Option<Vec<u8>> {
    let bytes: Option<Vec<u8>> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    bytes.filter(|b| b.len() == 6)
}

/// subnet.env and the conflist as they must be; the paths it had to
/// (re)write.
fn ensure_cni_files(opts: &Options, node: &NodeState) -> Result<Vec<PathBuf>> {
    let env = subnets::subnet_env(&node.conf, Some(node.local.subnet), None, node.mtu, true);
    let conflist = files::conflist(&files::CniPlugin {
        network: &opts.network,
        subnet_file: &opts.subnet_file,
        ipam_dir: &opts.ipam_dir,
        host_local_dir: opts.host_local_dir.as_deref(),
        policy_socket: opts.policy_socket.as_deref(),
    });
    let conflist = serde_json::to_string_pretty(&conflist)?;
    let wanted = [
        (opts.subnet_file.clone(), env),
        (opts.cni_conf_dir.join(files::CONFLIST), conflist),
    ];
    let mut written = Vec::new();
    for (path, data) in wanted {
        if files::ensure(&path, data.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?
        {
            written.push(path);
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn lease(node: &str, subnet: &str, expires_in: i64) -> SubnetLease {
        let now = SystemTime::now();
        let offset = Duration::from_secs(expires_in.unsigned_abs());
        SubnetLease {
            node: node.into(),
            subnet: subnet.parse().unwrap(),
            public_ip: "198.18.0.10".parse().unwrap(),
            backend: json!({"vtepMAC": "02:00:00:00:00:0a"}),
            expires_at: Some(if expires_in >= 0 {
                now + offset
            } else {
                now - offset
            }),
        }
    }

    /// Feeds a lease watch as the loop does (a burst taken in whole) and
    /// returns the names of the peers it would converge to.
    async fn peers_after(events: Vec<Event<SubnetLease>>) -> Option<Vec<String>> {
        let mut watch = stream::iter(events.into_iter().map(Ok)).boxed();
        let mut known = lease_cache();
        while let Some(event) = watch.next().now_or_never().flatten() {
            take_lease_event(&mut known, Some(event));
        }
        known.is_synced().then(|| {
            peers(known.values(), "me", SystemTime::now())
                .into_iter()
                .map(|p| p.name)
                .collect()
        })
    }

    #[tokio::test]
    async fn peers_are_the_other_live_leases_once_the_list_is_complete() {
        let listing = vec![
            Event::Init,
            Event::InitApply(lease("me", "10.244.0.0/24", 60)),
            Event::InitApply(lease("a", "10.244.1.0/24", 60)),
        ];
        assert_eq!(peers_after(listing.clone()).await, None, "no InitDone yet");
        let mut events = listing;
        events.extend([
            Event::InitDone,
            Event::Apply(lease("b", "10.244.2.0/24", 60)),
            Event::Apply(lease("expired", "10.244.3.0/24", -1)),
        ]);
        assert_eq!(
            peers_after(events.clone()).await,
            Some(vec!["a".into(), "b".into()])
        );
        events.push(Event::Delete(lease("a", "10.244.1.0/24", 60)));
        assert_eq!(peers_after(events).await, Some(vec!["b".into()]));
    }

    #[tokio::test]
    async fn a_relist_drops_nodes_that_left_meanwhile() {
        let events = vec![
            Event::Init,
            Event::InitApply(lease("a", "10.244.1.0/24", 60)),
            Event::InitApply(lease("b", "10.244.2.0/24", 60)),
            Event::InitDone,
            Event::Init,
            Event::InitApply(lease("b", "10.244.2.0/24", 60)),
            Event::InitDone,
        ];
        assert_eq!(peers_after(events).await, Some(vec!["b".into()]));
    }

    #[test]
    fn the_underlay_is_the_preferred_default_routes_interface() {
        let route = |dst: Option<&str>, priority, oif, table| Route {
            dst: dst.map(|d| d.parse().unwrap()),
            priority: Some(priority),
            oif: Some(oif),
            table: Some(table),
            ..Route::default()
        };
        let routes = [
            route(Some("198.18.0.0/24"), 0, 1, 254),
            route(None, 200, 2, 254),
            route(Some("0.0.0.0/0"), 100, 3, 254),
            route(None, 0, 4, 100),
        ];
        assert_eq!(default_route_interface(&routes), Some(3));
        assert_eq!(default_route_interface(&routes[..1]), None);
    }

    #[test]
    fn a_peer_carries_its_vtep_mac_when_it_reads() {
        let peer = peer_of(&lease("a", "10.244.1.0/24", 60));
        assert_eq!(peer.vtep_mac, Some(vec![2, 0, 0, 0, 0, 10]));
        let mut odd = lease("a", "10.244.1.0/24", 60);
        odd.backend = json!({"vtepMAC": "zz"});
        assert_eq!(peer_of(&odd).vtep_mac, None);
    }

    #[test]
    fn a_source_problem_is_logged_once_and_kept_until_it_clears() {
        let mut problem = Problem::default();
        assert_eq!(problem.check(None), None);
        let gone = Some("store.db was removed".to_string());
        assert_eq!(problem.check(gone.clone()), gone);
        assert_eq!(problem.reported, gone);
        assert_eq!(problem.check(None), None);
        assert_eq!(problem.reported, None);
    }
}
