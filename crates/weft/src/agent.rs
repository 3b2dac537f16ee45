//! `weft agent`: the node agent's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use tokio::signal::unix::{signal, SignalKind};
use weft_agent::run::Options;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// This node's name (a Kubernetes node name: a DNS-1123 subdomain).
    #[arg(long, value_parser = node_name)]
    node: String,
    /// The embedded cluster store (SQLite file shared by the cluster's agents).
    #[arg(long, default_value = "/var/lib/weft/store.db")]
    store: PathBuf,
    /// flannel-style net-conf.json.
    #[arg(long, default_value = "/etc/weft/net-conf.json")]
    net_conf: PathBuf,
    /// The underlay interface (its first IPv4 address is the node's public IP).
    #[arg(long, default_value = "eth0")]
    iface: String,
    #[arg(long, default_value = "weft")]
    network: String,
    #[arg(long, default_value = "/run/weft/subnet.env")]
    subnet_file: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    #[arg(long, default_value = "/var/lib/cni/weft")]
    ipam_dir: PathBuf,
    /// Where /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:10254")]
    health: SocketAddr,
    /// Lease lifetime in seconds (renewed at half-life; at least 4 × --resync-ms).
    #[arg(long, default_value_t = 86400, value_parser = clap::value_parser!(u64).range(1..=ONE_YEAR_S))]
    lease_ttl: u64,
    /// Full resync (drift repair) period in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=ONE_HOUR_MS))]
    resync_ms: u64,
    /// How often the store's change signals are polled where they cannot
    /// wake the agent (no inotify instance left), in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=ONE_MINUTE_MS))]
    watch_ms: u64,
    /// Do not run the Service proxy (leave Services to kube-proxy).
    #[arg(long)]
    no_proxy: bool,
    /// Node heartbeat period in milliseconds (LoadBalancer address failover
    /// happens after three missed beats).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=ONE_MINUTE_MS))]
    heartbeat_ms: u64,
    /// How often the Service proxy rebuilds its whole table from the store
    /// anyway, in seconds (repairs map elements changed by hand, which the
    /// 10 s drift check of chain and set names cannot see; it flushes and
    /// refills the maps in one transaction, so traffic is not disturbed).
    #[arg(long, env = "WEFT_PROXY_FULL_RESYNC_S", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=ONE_WEEK_S))]
    proxy_full_resync_s: u64,
    /// Comma-separated CIDRs Services' externalIPs must lie in (empty: any
    /// address). Whatever this says, an externalIP is refused when it is a
    /// ClusterIP, a node's address or on a port weft serves.
    #[arg(long, env = "WEFT_EXTERNAL_IP_CIDRS", default_value = "", value_parser = cidr_list)]
    external_ip_cidrs: CidrList,
}

/// A node name as the API server accepts it: it names the node's lease,
/// its Node object and its files.
fn node_name(text: &str) -> Result<String, String> {
    weft_validation::names::dns1123_subdomain(text)?;
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

// Upper bounds of the periods: longer ones are typos, not settings (and
// some would overflow the timers they feed).
const ONE_MINUTE_MS: u64 = 60_000;
const ONE_HOUR_MS: u64 = 3_600_000;
const ONE_WEEK_S: u64 = 7 * 24 * 3600;
const ONE_YEAR_S: u64 = 365 * 24 * 3600;

/// The lease is renewed by a resync pass once half its TTL is gone, so a
/// pass must come round several times within that half.
const RESYNCS_PER_LEASE: u64 = 4;

impl AgentArgs {
    /// The checks between flags (each flag's own range is clap's).
    fn check_periods(&self) -> Result<()> {
        let shortest_ttl_ms = RESYNCS_PER_LEASE * self.resync_ms;
        if self.lease_ttl * 1000 < shortest_ttl_ms {
            bail!(
                "--lease-ttl {} (seconds) is too short for --resync-ms {}: the lease is renewed \
                 on a resync pass after half its lifetime, so it must last at least \
                 {RESYNCS_PER_LEASE} × --resync-ms ({} s here); raise --lease-ttl or lower --resync-ms",
                self.lease_ttl,
                self.resync_ms,
                shortest_ttl_ms.div_ceil(1000)
            );
        }
        Ok(())
    }
}

pub fn run(a: AgentArgs) -> Result<()> {
    a.check_periods()?;
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let opts = Options {
        node: a.node,
        store: a.store,
        net_conf: a.net_conf,
        iface: a.iface,
        network: a.network,
        subnet_file: a.subnet_file,
        cni_conf_dir: a.cni_conf_dir,
        ipam_dir: a.ipam_dir,
        health: a.health,
        lease_ttl: Duration::from_secs(a.lease_ttl),
        resync: Duration::from_millis(a.resync_ms),
        watch_poll: Duration::from_millis(a.watch_ms),
        proxy: !a.no_proxy,
        heartbeat: Duration::from_millis(a.heartbeat_ms),
        proxy_full_resync: Duration::from_secs(a.proxy_full_resync_s),
        external_ip_cidrs: a.external_ip_cidrs.0,
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
        weft_agent::run::run(opts, shutdown).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ip_cidrs_read_as_a_list_and_empty_means_none() {
        assert!(cidr_list("").unwrap().0.is_empty());
        let list = cidr_list("198.18.0.0/24, 10.0.0.0/8").unwrap().0;
        assert_eq!(list.len(), 2);
        let err = cidr_list("198.18.0.0/24,198.18.1.99").unwrap_err();
        assert!(err.contains("\"198.18.1.99\""), "{err}");
    }
}
