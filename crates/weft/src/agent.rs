//! `weft agent`: the node agent's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use tokio::signal::unix::{signal, SignalKind};
use weft_agent::config::NetConf;
use weft_agent::lb_allocator::{self, parse_pools, AllocatorOptions, Pool};
use weft_agent::run::{NodePortsOn, Options};
use weft_cluster::embedded::Embedded;
use weft_cluster::etcd::{Etcd, EtcdConfig, EtcdLeases};
use weft_cluster::kubernetes::{ApiAccess, Kubernetes};

use crate::period::{self, ms, secs, show};

#[derive(clap::Args)]
pub struct AgentArgs {
    /// This node's name (a Kubernetes node name: a DNS-1123 subdomain).
    #[arg(long, env = "NODE_NAME", value_parser = node_name, required_unless_present = "cleanup")]
    node: Option<String>,
    /// Remove what the agent put on this node (its devices, routes,
    /// nftables tables and CNI files) and exit, as `kube-proxy --cleanup`.
    #[arg(long)]
    cleanup: bool,
    /// The embedded cluster store (SQLite file shared by the cluster's
    /// agents), used unless the cluster is a Kubernetes one.
    #[arg(long, default_value = "/var/lib/weft/store.db")]
    store: PathBuf,
    /// Read the cluster from the kube-apiserver of this kubeconfig
    /// (subnets are the Nodes' podCIDRs, as flannel's --kube-subnet-mgr).
    #[arg(long, conflicts_with = "in_cluster")]
    kubeconfig: Option<PathBuf>,
    /// Read the cluster from the kube-apiserver with the pod's
    /// service-account token (when running as a DaemonSet).
    #[arg(long)]
    in_cluster: bool,
    /// Lease subnets in etcd, in flannel's layout (flanneld's etcd mode):
    /// its client URLs, comma-separated. The network config is then read
    /// from `<--etcd-prefix>/config`, not from --net-conf. With
    /// --kubeconfig or --in-cluster too, Services and policies come from
    /// that API (Nodes are left alone); without, the agent runs the
    /// overlay alone.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// The etcd prefix of the network config and leases.
    #[arg(long, default_value = weft_cluster::etcd::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// The CA certificate that etcd's certificate must be signed by.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// This agent's client certificate for etcd (with --etcd-keyfile).
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    /// The key of --etcd-certfile.
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
    /// The API server's real address (https://HOST:PORT), over the
    /// kubeconfig's server or KUBERNETES_SERVICE_HOST (which is the
    /// `kubernetes` ClusterIP this agent itself programs).
    #[arg(long)]
    kube_api_server: Option<String>,
    /// flannel-style net-conf.json.
    #[arg(long, default_value = "/etc/weft/net-conf.json")]
    net_conf: PathBuf,
    /// The underlay interface (its first IPv4 address is the node's public
    /// IP); by default the interface of the node's IPv4 default route.
    #[arg(long, default_value = "")]
    iface: String,
    #[arg(long, default_value = "weft")]
    network: String,
    #[arg(long, default_value = "/run/weft/subnet.env")]
    subnet_file: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "/var/lib/cni/weft")]
    ipam_dir: PathBuf,
    /// The reference host-local plugin's reservations of the network that
    /// wired this node's pods before weft (flannel's CNI chain: network
    /// cbr0): weft-cni never hands those addresses out and releases them at
    /// their pod's DEL. Empty: none.
    #[arg(long, default_value = "/var/lib/cni/networks/cbr0")]
    host_local_dir: String,
    /// Where weft-cni asks the agent to put a new pod's NetworkPolicy in
    /// place before the pod starts (ADD fails with "try again later"
    /// while the agent is down); empty: pods start without waiting.
    #[arg(long, default_value = "/run/weft/policy.sock")]
    policy_socket: String,
    /// Where /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:10254")]
    health: SocketAddr,
    /// Lease lifetime (renewed at half-life; at least 4 × --resync).
    #[arg(long, default_value = "24h", value_parser = period::between(secs(1), secs(365 * 86400)))]
    lease_ttl: Duration,
    /// Full resync (drift repair) period.
    #[arg(long, default_value = "2s", value_parser = period::between(ms(100), secs(3600)))]
    resync: Duration,
    /// `/healthz` fails when the agent's loop has not come round for this
    /// long (at least 2 × --resync).
    #[arg(long, default_value = "6s", value_parser = period::between(ms(200), secs(7200)))]
    health_stale_after: Duration,
    /// How often the store's change signals are polled where they cannot
    /// wake the agent (no inotify instance left).
    #[arg(long, default_value = "20ms", value_parser = period::between(ms(1), secs(60)))]
    watch_poll: Duration,
    /// Do not program Services (leave them to kube-proxy); LoadBalancer
    /// addresses are still allocated and announced unless
    /// --no-lb-allocator says another implementation has them.
    #[arg(long)]
    no_proxy: bool,
    /// Where the Service proxy's health endpoint listens (kube-proxy's
    /// /healthz, which load balancers probe); empty: nowhere.
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = optional_address)]
    proxy_health: OptionalAddress,
    /// Where NodePorts answer: `primary`, the node's own address on the
    /// underlay (kube-proxy's default); `all` local addresses (the pod
    /// bridge's and the VXLAN device's too); or the local addresses in
    /// these comma-separated IPv4 CIDRs, as kube-proxy's
    /// --nodeport-addresses (followed as addresses come and go).
    #[arg(long, env = "WEFT_NODEPORT_ADDRESSES", default_value = "primary", value_parser = nodeport_addresses)]
    nodeport_addresses: NodePortsOn,
    /// Node heartbeat period (LoadBalancer address failover happens after
    /// three missed beats).
    #[arg(long, env = "WEFT_HEARTBEAT", default_value = "1s", value_parser = period::between(ms(100), secs(60)))]
    heartbeat: Duration,
    /// How often the Service proxy compares its table's chain and set
    /// names with what it applied.
    #[arg(long, default_value = "10s", value_parser = period::between(ms(100), secs(3600)))]
    proxy_drift_check: Duration,
    /// How often the Service proxy rebuilds its whole table anyway (repairs
    /// map elements changed by hand, which the drift check of chain and
    /// set names cannot see; it flushes and refills the maps in one
    /// transaction, so traffic is not disturbed).
    #[arg(long, env = "WEFT_PROXY_FULL_RESYNC", default_value = "1h", value_parser = period::between(secs(1), secs(7 * 86400)))]
    proxy_full_resync: Duration,
    /// Comma-separated CIDRs Services' externalIPs must lie in (empty: any
    /// address). Whatever this says, an externalIP is refused when it is a
    /// ClusterIP, a node's address or on a port weft serves.
    #[arg(long, env = "WEFT_EXTERNAL_IP_CIDRS", default_value = "", value_parser = cidr_list)]
    external_ip_cidrs: CidrList,
    /// On Kubernetes: weft's own namespace (its LoadBalancer allocator
    /// Lease and pools ConfigMap); the install manifest sets POD_NAMESPACE.
    #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system", value_parser = namespace_name)]
    namespace: String,
    /// On Kubernetes: LoadBalancer address pools (CIDRs or FIRST-LAST
    /// ranges, comma-separated) besides the ConfigMap weft-lb-pools.
    #[arg(long, env = "WEFT_LB_CIDR", default_value = "", value_parser = lb_pools)]
    lb_cidr: LbPools,
    /// Serve LoadBalancer Services of this loadBalancerClass (by default
    /// those without a class): allocate their addresses (on Kubernetes)
    /// and announce them; another class's addresses are left to its
    /// implementation.
    #[arg(long)]
    load_balancer_class: Option<String>,
    /// On Kubernetes: do not take part in LoadBalancer address allocation
    /// (another controller, e.g. a cloud provider's, fills their status);
    /// with --no-proxy, do not announce LoadBalancer addresses either.
    #[arg(long)]
    no_lb_allocator: bool,
    /// How long the elected LoadBalancer allocator's Lease lasts
    /// unrenewed (renewed every third of it; the other nodes look once
    /// per term).
    #[arg(long, default_value = "15s", value_parser = period::between(secs(3), secs(3600)))]
    lb_allocator_term: Duration,
}

impl AgentArgs {
    /// Whether the cluster is etcd alone: leases, and no Kubernetes API
    /// (no Services, policies or Pods).
    fn etcd_alone(&self) -> bool {
        !self.etcd_endpoints.is_empty() && self.kubeconfig.is_none() && !self.in_cluster
    }

    /// The policy gate's socket; none with etcd alone, which has no pods
    /// or policies (a pod would wait for a Pod the agent never sees).
    fn policy_socket(&self) -> Option<PathBuf> {
        Some(&self.policy_socket)
            .filter(|p| !p.is_empty() && !self.etcd_alone())
            .map(PathBuf::from)
    }
}

/// `weft agent --cleanup`.
fn cleanup(a: &AgentArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let removed = rt.block_on(weft_agent::cleanup::cleanup(
        &a.subnet_file,
        &a.cni_conf_dir,
        a.policy_socket().as_deref(),
    ))?;
    println!("{removed}");
    Ok(())
}

/// Where the agent reads the cluster.
enum Source {
    Store {
        path: PathBuf,
        network: String,
        poll: Duration,
    },
    Kubernetes(KubeSource),
    /// Leases in etcd (flannel's layout); the objects from a
    /// kube-apiserver when one is given, else none.
    Etcd {
        config: EtcdConfig,
        kube: Option<KubeSource>,
    },
}

/// A kube-apiserver to read the cluster from.
struct KubeSource {
    access: ApiAccess,
    server: Option<String>,
    namespace: String,
    /// `None`: another controller allocates LoadBalancer addresses.
    allocator: Option<AllocatorOptions>,
}

impl KubeSource {
    /// The API server of `a`'s flags, if they name one.
    fn of(a: &AgentArgs) -> Result<Option<KubeSource>> {
        let access = match (&a.kubeconfig, a.in_cluster) {
            (Some(path), _) => ApiAccess::Kubeconfig(path.clone()),
            (None, true) => ApiAccess::InCluster,
            (None, false) if a.kube_api_server.as_deref().is_some_and(|s| !s.is_empty()) => {
                bail!("--kube-api-server needs --kubeconfig or --in-cluster")
            }
            (None, false) => return Ok(None),
        };
        // An empty address (the install manifest's ConfigMap left blank)
        // means the kubeconfig's or the in-cluster one.
        let server = a.kube_api_server.clone().filter(|s| !s.trim().is_empty());
        let allocator = (!a.no_lb_allocator).then(|| AllocatorOptions {
            candidate: a.node.clone().unwrap_or_default(),
            term: a.lb_allocator_term,
            class: a.load_balancer_class.clone(),
            pools: a.lb_cidr.0.clone(),
        });
        Ok(Some(KubeSource {
            access,
            server,
            namespace: a.namespace.clone(),
            allocator,
        }))
    }

    async fn connect(&self) -> Result<Kubernetes> {
        let cluster = Kubernetes::connect(&self.access, self.server.as_deref()).await?;
        Ok(cluster.in_namespace(self.namespace.clone()))
    }
}

impl Source {
    fn of(a: &AgentArgs) -> Result<Source> {
        let kube = KubeSource::of(a)?;
        if !a.etcd_endpoints.is_empty() {
            let config = EtcdConfig {
                endpoints: a.etcd_endpoints.clone(),
                prefix: a.etcd_prefix.clone(),
                ca_file: a.etcd_cafile.clone(),
                cert_file: a.etcd_certfile.clone(),
                key_file: a.etcd_keyfile.clone(),
            };
            return Ok(Source::Etcd { config, kube });
        }
        Ok(match kube {
            Some(kube) => Source::Kubernetes(kube),
            None => Source::Store {
                path: a.store.clone(),
                network: a.network.clone(),
                poll: a.watch_poll,
            },
        })
    }
}

/// etcd and the network config in it, waiting (as flanneld does) while
/// etcd cannot be reached or holds no config yet; a config that is there
/// but invalid is an error.
async fn etcd_and_its_config(config: &EtcdConfig) -> Result<(Etcd, NetConf)> {
    let mut pause = Duration::from_secs(1);
    loop {
        let connected = match Etcd::connect(config).await {
            Ok(etcd) => etcd.network_config().await.map(|text| (etcd, text)),
            Err(e) => Err(e),
        };
        match connected {
            Ok((etcd, text)) => {
                let conf = NetConf::parse(&text)
                    .map_err(anyhow::Error::from)
                    .and_then(weft_agent::run::supported)
                    .with_context(|| {
                        format!("the network config in etcd at {}/config", config.prefix)
                    })?;
                return Ok((etcd, conf));
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?pause, "waiting for etcd and the network config");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs `agent` with the LoadBalancer allocator beside it (when `kube`
/// is to run one), stopping the allocator when the agent ends.
async fn with_allocator(
    kube: &KubeSource,
    cluster: &Kubernetes,
    agent: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let allocating = kube
        .allocator
        .clone()
        .map(|opts| tokio::spawn(lb_allocator::run(cluster.clone(), opts)));
    let outcome = agent.await;
    allocating.inspect(tokio::task::JoinHandle::abort);
    outcome
}

/// A node name as the API server accepts it: it names the node's lease,
/// its Node object and its files.
fn node_name(text: &str) -> Result<String, String> {
    weft_validation::names::dns1123_subdomain(text)?;
    Ok(text.to_string())
}

/// A namespace name (a DNS-1123 label).
fn namespace_name(text: &str) -> Result<String, String> {
    weft_validation::names::dns1123_label(text)?;
    Ok(text.to_string())
}

/// A comma-separated list of IPv4 CIDRs; empty text is an empty list.
#[derive(Debug, Clone)]
struct CidrList(Vec<Ipv4Net>);

fn cidr_list(text: &str) -> Result<CidrList, String> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse()
                .map_err(|_| format!("{entry:?} is not an IPv4 CIDR such as 198.18.0.0/24"))
        })
        .collect::<Result<_, _>>()
        .map(CidrList)
}

/// LoadBalancer pools given on the command line.
#[derive(Debug, Clone)]
struct LbPools(Vec<Pool>);

fn lb_pools(text: &str) -> Result<LbPools, String> {
    parse_pools(text).map(LbPools).map_err(|e| e.to_string())
}

/// The lease is renewed by a resync pass once half its TTL is gone, so a
/// pass must come round several times within that half.
const RESYNCS_PER_LEASE: u32 = 4;

/// `/healthz` must allow the loop a pass and a retry.
const RESYNCS_PER_STALE: u32 = 2;

impl AgentArgs {
    /// The checks between flags (each flag's own range is clap's).
    fn check_periods(&self) -> Result<()> {
        let (ttl, resync) = (self.lease_ttl, self.resync);
        if ttl < resync * RESYNCS_PER_LEASE {
            bail!(
                "--lease-ttl {} is too short for --resync {}: the lease is renewed on a resync \
                 pass after half its lifetime, so it must last at least {RESYNCS_PER_LEASE} × \
                 --resync ({} here); raise --lease-ttl or lower --resync",
                show(ttl),
                show(resync),
                show(resync * RESYNCS_PER_LEASE)
            );
        }
        if self.health_stale_after < resync * RESYNCS_PER_STALE {
            bail!(
                "--health-stale-after {} is too short for --resync {}: the loop comes round \
                 once per --resync, so /healthz would fail on a healthy agent; use at least \
                 {RESYNCS_PER_STALE} × --resync ({})",
                show(self.health_stale_after),
                show(resync),
                show(resync * RESYNCS_PER_STALE)
            );
        }
        Ok(())
    }
}

/// What the agent logs unless RUST_LOG says otherwise. kube-client logs
/// an ERROR line for every failed request, which while the API server is
/// away means several a second; the agent's own warnings carry the same
/// error, with what it does about it.
const DEFAULT_LOG_FILTER: &str = "info,kube_client::client::builder=off";

/// `--nodeport-addresses`: `primary`, `all`, or comma-separated IPv4
/// CIDRs (kube-proxy's form).
fn nodeport_addresses(text: &str) -> Result<NodePortsOn, String> {
    match text.trim() {
        "primary" => Ok(NodePortsOn::Primary),
        "all" => Ok(NodePortsOn::All),
        list => {
            let CidrList(cidrs) = cidr_list(list).map_err(|e| {
                format!("{e}; give primary, all, or IPv4 CIDRs such as 198.18.0.0/24,10.0.0.0/8")
            })?;
            if cidrs.is_empty() {
                return Err("give primary, all, or IPv4 CIDRs such as 198.18.0.0/24".into());
            }
            Ok(NodePortsOn::Cidrs(cidrs))
        }
    }
}

/// An address, or none for empty text (a newtype: clap reads a bare
/// `Option` field as "may be absent").
#[derive(Debug, Clone)]
struct OptionalAddress(Option<SocketAddr>);

fn optional_address(text: &str) -> Result<OptionalAddress, String> {
    if text.is_empty() {
        return Ok(OptionalAddress(None));
    }
    text.parse().map(|a| OptionalAddress(Some(a))).map_err(|e| {
        format!("{text:?} is not an address:port ({e}); give e.g. 0.0.0.0:10256, or \"\" for none")
    })
}

/// Logs to stdout, filtered by RUST_LOG or else [`DEFAULT_LOG_FILTER`]
/// (the agent's and the lab kubelet's).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .init();
}

pub fn run(a: AgentArgs) -> Result<()> {
    a.check_periods()?;
    init_logging();
    if a.cleanup {
        return cleanup(&a);
    }
    let node = a
        .node
        .clone()
        .context("--node (or NODE_NAME) names this node")?;
    let source = Source::of(&a)?;
    // Read before anything else is opened, unless etcd holds it.
    let file_conf = match source {
        Source::Etcd { .. } => None,
        _ => Some(weft_agent::run::read_net_conf(&a.net_conf)?),
    };
    let policy_socket = a.policy_socket();
    let etcd_alone = a.etcd_alone();
    let (health, stale) = (a.health, a.health_stale_after);
    let options = move |net_conf| Options {
        node,
        net_conf,
        iface: a.iface,
        network: a.network,
        subnet_file: a.subnet_file,
        cni_conf_dir: a.cni_conf_dir,
        ipam_dir: a.ipam_dir,
        host_local_dir: Some(a.host_local_dir)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        policy_socket,
        health: a.health,
        lease_ttl: a.lease_ttl,
        resync: a.resync,
        health_stale_after: a.health_stale_after,
        // With etcd alone there are no Services to program.
        proxy: !a.no_proxy && !etcd_alone,
        announce_load_balancers: !a.no_lb_allocator,
        proxy_health: a.proxy_health.0,
        nodeport_addresses: a.nodeport_addresses,
        heartbeat: a.heartbeat,
        proxy_drift_check: a.proxy_drift_check,
        proxy_full_resync: a.proxy_full_resync,
        external_ip_cidrs: a.external_ip_cidrs.0,
        load_balancer_class: a.load_balancer_class.clone(),
    };
    // One thread: netlink sockets and namespaces are per thread anyway.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let mut shutdown = Box::pin(shutdown);
        let file_conf = || file_conf.context("net-conf.json is read for this source");
        match source {
            Source::Etcd { config, kube } => {
                let why = format!(
                    "waiting for etcd at {} and the network config at {}/config",
                    config.endpoints.join(","),
                    config.prefix
                );
                let ready = async {
                    tokio::select! {
                        ready = etcd_and_its_config(&config) => Some(ready),
                        _ = &mut shutdown => None,
                    }
                };
                let ready = weft_agent::health::while_waiting(health, stale, why, ready).await;
                let Some(ready) = ready else { return Ok(()) };
                let (leases, conf) = ready?;
                let Some(kube) = kube else {
                    return weft_agent::run::run(options(conf), leases, shutdown).await;
                };
                let objects = kube.connect().await?;
                let cluster = EtcdLeases {
                    objects: objects.clone(),
                    leases,
                };
                let agent = weft_agent::run::run(options(conf), cluster, shutdown);
                with_allocator(&kube, &objects, agent).await
            }
            Source::Store {
                path,
                network,
                poll,
            } => {
                let cluster = Embedded::open(&path, &network, poll)
                    .with_context(|| format!("opening the cluster store {}", path.display()))?;
                weft_agent::run::run(options(file_conf()?), cluster, shutdown).await
            }
            Source::Kubernetes(kube) => {
                let cluster = kube.connect().await?;
                let agent = weft_agent::run::run(options(file_conf()?), cluster.clone(), shutdown);
                with_allocator(&kube, &cluster, agent).await
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn the_proxy_health_address_defaults_to_kube_proxys_and_empty_means_none() {
        use clap::Parser;
        let default = Cli::try_parse_from(["weft", "--node", "n"])
            .unwrap()
            .agent
            .proxy_health
            .0;
        assert_eq!(default, Some("0.0.0.0:10256".parse().unwrap()));
        let none = Cli::try_parse_from(["weft", "--node", "n", "--proxy-health", ""]).unwrap();
        assert_eq!(none.agent.proxy_health.0, None);
    }

    #[test]
    fn external_ip_cidrs_read_as_a_list_and_empty_means_none() {
        assert!(cidr_list("").unwrap().0.is_empty());
        let list = cidr_list("198.18.0.0/24, 10.0.0.0/8").unwrap().0;
        assert_eq!(list.len(), 2);
        let err = cidr_list("198.18.0.0/24,198.18.1.99").unwrap_err();
        assert!(err.contains("\"198.18.1.99\""), "{err}");
    }

    #[test]
    fn nodeport_addresses_are_primary_all_or_cidrs_as_kube_proxy_takes_them() {
        assert_eq!(nodeport_addresses("primary"), Ok(NodePortsOn::Primary));
        assert_eq!(nodeport_addresses("all"), Ok(NodePortsOn::All));
        assert_eq!(
            nodeport_addresses("198.18.0.0/24,10.244.0.0/16"),
            Ok(NodePortsOn::Cidrs(vec![
                "198.18.0.0/24".parse().unwrap(),
                "10.244.0.0/16".parse().unwrap()
            ]))
        );
        for bad in ["", "everywhere", "198.18.0.1", "fd00::/64"] {
            let err = nodeport_addresses(bad).unwrap_err();
            assert!(
                err.contains("primary, all, or IPv4 CIDRs"),
                "{bad:?}: {err}"
            );
        }
    }
}
