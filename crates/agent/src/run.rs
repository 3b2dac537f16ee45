//! The node agent's life: lease a subnet, set up the backend device, hand
//! the subnet to the CNI plugin, then converge the datapath on every lease
//! change and every resync tick (which also repairs drift), renewing the
//! lease before it expires.
//!
//! Stopping the agent leaves the datapath and the lease in place, so a
//! restart neither interrupts pod traffic nor changes the node's subnet.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use weft_datapath::netlink::{format_mac, VxlanSpec};
use weft_datapath::{sysctl, Netlink};
use weft_store::{Lease, Store};

use crate::backend::{self, Desired, LocalNode, Peer};
use crate::config::{Backend, NetConf};
use crate::health::{self, Health};
use crate::proxy::ProxyOptions;
use crate::reconcile::Reconciler;
use crate::{files, masq, subnets};

/// Everything `weft agent` is told on its command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub node: String,
    pub store: PathBuf,
    pub net_conf: PathBuf,
    pub iface: String,
    pub network: String,
    pub subnet_file: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub ipam_dir: PathBuf,
    pub health: SocketAddr,
    pub lease_ttl: Duration,
    pub resync: Duration,
    /// How often a store watch looks for changes where it cannot be woken.
    pub watch_poll: Duration,
    /// Run the Service proxy (kube-proxy's job) in this agent.
    pub proxy: bool,
    /// Node heartbeat period (LoadBalancer failover takes ~3 of these).
    pub heartbeat: Duration,
    /// How often the Service proxy rebuilds its table regardless.
    pub proxy_full_resync: Duration,
    /// Where Services' externalIPs may lie (empty: anywhere).
    pub external_ip_cidrs: Vec<ipnet::Ipv4Net>,
}

/// The parts of the node that do not change while the agent runs.
struct NodeState {
    local: LocalNode,
    conf: NetConf,
    device: Option<u32>,
    mtu: u32,
}

pub async fn run(opts: Options, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let conf = NetConf::read(&opts.net_conf)?;
    let Some(v4) = conf.ipv4.clone() else {
        bail!("net-conf.json: this agent needs an IPv4 Network (IPv6-only clusters are not supported yet)");
    };
    if conf.ipv6.is_some() {
        bail!("net-conf.json: EnableIPv6 is not supported by the agent yet; remove IPv6Network/EnableIPv6 (weft-cni itself is dual-stack)");
    }
    let store = Store::open(&opts.store)
        .with_context(|| format!("opening the cluster store {}", opts.store.display()))?;
    let netlink = Netlink::connect()?;
    let underlay = netlink.link(&opts.iface).await?.with_context(|| {
        format!(
            "interface {} not found; pass the node's underlay interface with --iface",
            opts.iface
        )
    })?;
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

    let (backend_data, mtu) = match &conf.backend {
        Backend::Vxlan { vni, mtu, .. } => {
            let mac = backend::vxlan::vtep_mac(&opts.node, *vni);
            let mtu = mtu.unwrap_or(underlay.mtu.unwrap_or(1500) - backend::vxlan::OVERHEAD);
            (json!({"vtepMAC": format_mac(&mac)}), mtu)
        }
        Backend::HostGw { mtu } => (json!({}), mtu.unwrap_or(underlay.mtu.unwrap_or(1500))),
    };
    let lease = store.acquire_lease(
        &opts.network,
        &opts.node,
        public.addr(),
        &backend_data,
        opts.lease_ttl,
        |taken| subnets::choose(&v4, taken),
    )?;
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
        mtu,
    };
    ensure_node_datapath(&netlink, &mut node).await?;
    ensure_cni_files(&opts, &node)?;
    publish_node_object(&store, &node)?;
    let health_state = Arc::new(Health::default());
    health_state.beat();
    if opts.proxy {
        crate::proxy::spawn(ProxyOptions {
            node: opts.node.clone(),
            store: opts.store.clone(),
            iface: opts.iface.clone(),
            cluster_cidrs: match v4.network {
                IpNet::V4(net) => vec![net],
                IpNet::V6(_) => Vec::new(),
            },
            watch_poll: opts.watch_poll,
            resync: opts.resync * 5,
            heartbeat: opts.heartbeat,
            full_resync: opts.proxy_full_resync,
            health: health_state.clone(),
            health_port: opts.health.port(),
            external_ip_cidrs: opts.external_ip_cidrs.clone(),
        })
        .context("starting the Service proxy thread")?;
    }

    let server = tokio::spawn(health::serve(
        opts.health,
        health_state.clone(),
        opts.resync * 3,
    ));

    let (_, revision) = store.leases(&opts.network)?;
    let mut watcher = store.watch("Lease", revision, opts.watch_poll);
    let mut resync = tokio::time::interval(opts.resync);
    let mut last_renew = Instant::now();
    let mut store_file = StoreFile::default();
    tokio::pin!(shutdown);
    loop {
        let converged = converge_logged(&store, &netlink, &opts, &mut node).await;
        let files_written = restore_cni_files(&opts, &node);
        match store_file.check(&store) {
            Some(problem) => health_state.set_unready(problem),
            None if converged && files_written => health_state.set_ready(),
            None => {}
        }
        health_state.beat();
        if last_renew.elapsed() >= opts.lease_ttl / 2 {
            store.renew_lease(&opts.network, &opts.node, opts.lease_ttl)?;
            // Housekeeping only (acquire replaces expired rows itself), so it
            // rides on the renewal cadence instead of taking the store's
            // write lock on every pass.
            store.expire_leases(&opts.network)?;
            last_renew = Instant::now();
        }
        tokio::select! {
            events = watcher.next() => {
                if let Err(e) = events {
                    // The log was compacted past us: re-list, like a watch after 410 Gone.
                    let weft_store::StoreError::Compacted { .. } = e else { return Err(e.into()) };
                    let (_, revision) = store.leases(&opts.network)?;
                    watcher = store.watch("Lease", revision, opts.watch_poll);
                }
            }
            _ = resync.tick() => {}
            _ = &mut shutdown => break,
        }
    }
    server.abort();
    tracing::info!("stopping; the datapath and the lease stay in place");
    Ok(())
}

/// Watches the store's file under the agent. A removed or replaced file is
/// logged once and keeps the agent unready with the reason; the agent goes
/// on with the file it has open (the datapath stays, pod traffic flows) but
/// no longer shares state with processes opening the path, so it has to be
/// restarted on the right store.
#[derive(Default)]
struct StoreFile {
    reported: Option<String>,
}

impl StoreFile {
    /// The problem with the store's file, if any.
    fn check(&mut self, store: &Store) -> Option<String> {
        let problem = store.check_file().err().map(|e| e.to_string());
        if problem != self.reported {
            if let Some(problem) = &problem {
                tracing::error!(error = %problem, "the cluster store's file changed under the agent");
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
        let device = netlink
            .ensure_vxlan(&VxlanSpec {
                name: crate::config::vxlan_device_name(*vni),
                vni: *vni,
                port: *port,
                local: node.local.public_ip,
                underlay: Some(node.local.underlay_index),
                gbp: *gbp,
                mtu: Some(node.mtu),
                mac: backend::vxlan::vtep_mac(&node.local.name, *vni),
            })
            .await?;
        let vtep = IpNet::new(node.local.subnet.network(), 32)?;
        netlink.add_address(device.index, vtep).await?;
        node.device = Some(device.index);
    }
    let networks: Vec<IpNet> = node.conf.ipv4.iter().map(|f| f.network).collect();
    masq::ensure(&networks)?;
    Ok(())
}

/// [`converge`], its outcome logged; whether it succeeded.
async fn converge_logged(
    store: &Store,
    netlink: &Netlink,
    opts: &Options,
    node: &mut NodeState,
) -> bool {
    match converge(store, netlink, opts, node).await {
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

async fn converge(
    store: &Store,
    netlink: &Netlink,
    opts: &Options,
    node: &mut NodeState,
) -> Result<usize> {
    ensure_node_datapath(netlink, node).await?;
    // Only live leases: expired ones drop out of the mesh without a write.
    let (leases, _) = store.leases(&opts.network)?;
    let peers: Vec<Peer> = leases
        .iter()
        .filter(|l| l.node != opts.node)
        .map(peer_of)
        .collect();
    let desired: Desired = match &node.conf.backend {
        Backend::Vxlan { direct_routing, .. } => {
            let device = node.device.context("the vxlan device is missing")?;
            backend::vxlan::plan(&node.local, &peers, device, *direct_routing)?
        }
        Backend::HostGw { .. } => backend::hostgw::plan(&node.local, &peers)?,
    };
    let reconciler = Reconciler {
        netlink,
        device: node.device,
    };
    Ok(reconciler.sync(&desired).await?.count())
}

/// Puts back the CNI files if they were deleted or changed; whether they
/// are as they must be. Apart from [`converge`], so that neither failing
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

fn peer_of(lease: &Lease) -> Peer {
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
    let conflist = files::conflist(&opts.network, &opts.subnet_file, &opts.ipam_dir);
    let conflist = serde_json::to_string_pretty(&conflist)?;
    let wanted = [
        (opts.subnet_file.clone(), env),
        (opts.cni_conf_dir.join("10-weft.conflist"), conflist),
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

/// The Node object as Kubernetes would show it: podCIDR and InternalIP.
fn publish_node_object(store: &Store, node: &NodeState) -> Result<()> {
    let mut obj = store
        .get_typed::<Node>("", &node.local.name)?
        .unwrap_or_else(|| Node {
            metadata: ObjectMeta {
                name: Some(node.local.name.clone()),
                ..Default::default()
            },
            ..Default::default()
        });
    let spec = obj.spec.get_or_insert_with(NodeSpec::default);
    spec.pod_cidr = Some(node.local.subnet.to_string());
    spec.pod_cidrs = Some(vec![node.local.subnet.to_string()]);
    let status = obj.status.get_or_insert_with(NodeStatus::default);
    status.addresses = Some(vec![
        NodeAddress {
            type_: "InternalIP".into(),
            address: node.local.public_ip.to_string(),
        },
        NodeAddress {
            type_: "Hostname".into(),
            address: node.local.name.clone(),
        },
    ]);
    let annotations = obj
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(
        "weft.dev/backend".into(),
        node.conf.backend.type_name().into(),
    );
    annotations.insert(
        "weft.dev/public-ip".into(),
        node.local.public_ip.to_string(),
    );
    store.put_typed(&obj)?;
    Ok(())
}
