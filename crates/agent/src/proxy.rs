//! The Service proxy's loop inside the agent: follow Services,
//! EndpointSlices, Nodes and ServiceCIDRs through the cluster seam, fully
//! sync once the Service and EndpointSlice lists are complete, then apply only the Services that changed. Also
//! renews the node heartbeat, announces the LoadBalancer addresses this
//! node owns (ARP) and serves the healthCheckNodePorts. No externalIP may
//! take a node's InternalIP (from the Nodes) or one of this node's
//! addresses (read at each heartbeat). The Services it leaves out (invalid,
//! or rejected by nft) are shown on the agent's `/readyz` and `/metrics`
//! and in an Event on each.
//!
//! It runs on its own thread so `nft` runs never delay the lease loop. A
//! failed incremental apply, drift found by the periodic check, a re-list
//! of either kind and the (hourly by default) full-resync timer lead to a
//! full sync from what the proxy holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{FutureExt, StreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use weft_cluster::cache::{object_key, Cache};
use weft_cluster::{ClusterError, ClusterState, Event, EventStream, Warning};
use weft_datapath::arp::ArpResponder;
use weft_datapath::Netlink;
use weft_proxy::health::HealthServers;
use weft_proxy::model::UNWATCHED_LABELS;
use weft_proxy::plan::NodePortAddresses;
use weft_proxy::{NodeContext, Proxier, ServiceKey, SyncReport};

use crate::health::Health;
use crate::metrics::{Cause, Metrics, SyncKind};
use crate::services::ServiceState;
use crate::speaker;

#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where the Services nft rejected are shown (`/readyz`).
    pub health: Arc<Health>,
    /// Where NodePorts answer.
    pub nodeport_addresses: NodePorts,
    /// Program Services in nftables; `false` (`--no-proxy`, kube-proxy
    /// programs them): only announce LoadBalancer addresses, as MetalLB
    /// beside kube-proxy.
    pub program: bool,
    /// The agent's health ports, which no externalIP may take.
    pub reserved_ports: std::collections::BTreeSet<u16>,
    /// `--external-ip-cidrs`: where externalIPs may lie (empty: anywhere).
    pub external_ip_cidrs: Vec<Ipv4Net>,
    /// The `loadBalancerClass` whose addresses this node announces
    /// (`None`: Services without one).
    pub load_balancer_class: Option<String>,
    pub node: String,
    /// Where LoadBalancer addresses are announced (the node's underlay).
    pub iface: String,
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// How often the table is checked for drift.
    pub drift_check: Duration,
    pub heartbeat: Duration,
    /// How often the table is rebuilt regardless (element drift is
    /// invisible to the cheap check).
    pub full_resync: Duration,
}

/// Where NodePorts answer: addresses known at start, or this node's
/// addresses in some CIDRs, followed as they come and go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePorts {
    Fixed(NodePortAddresses),
    InCidrs(Vec<Ipv4Net>),
}

impl NodePorts {
    /// The addresses, given the node's `local` ones.
    fn resolve(&self, local: &BTreeSet<Ipv4Addr>) -> NodePortAddresses {
        match self {
            NodePorts::Fixed(addresses) => addresses.clone(),
            NodePorts::InCidrs(cidrs) => NodePortAddresses::Only(
                local
                    .iter()
                    .filter(|ip| !ip.is_loopback() && cidrs.iter().any(|c| c.contains(*ip)))
                    .copied()
                    .collect(),
            ),
        }
    }
}

/// The Node label naming its zone.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// How long after a change the proxy waits for its companion (the
/// EndpointSlice of a new Service, or the reverse) before applying: a
/// writer puts them one after the other, well within this.
const COMPANION_WRITE_WAIT: Duration = Duration::from_millis(2);

/// Starts the proxy on its own thread; it retries after errors and never
/// returns while the agent runs.
pub fn spawn<C: ClusterState>(
    cluster: C,
    opts: ProxyOptions,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || loop {
            if let Err(e) = run(&cluster, &opts) {
                tracing::error!(error = %format!("{e:#}"), "Service proxy failed; starting over in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        })
}

fn run<C: ClusterState>(cluster: &C, opts: &ProxyOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Inside the runtime: the netlink connection registers with it.
    rt.block_on(async { Proxy::start(cluster.clone(), opts)?.follow().await })
}

/// The watches the proxy follows.
struct Watches {
    services: EventStream<Service>,
    slices: EventStream<EndpointSlice>,
    nodes: EventStream<Node>,
    service_cidrs: EventStream<ServiceCIDR>,
}

impl Watches {
    fn new<C: ClusterState>(cluster: &C) -> Self {
        // Scoped as kube-proxy's watches; the model checks again.
        Watches {
            services: cluster.watch_without(UNWATCHED_LABELS),
            slices: cluster.watch_without(UNWATCHED_LABELS),
            nodes: cluster.watch(),
            service_cidrs: cluster.watch(),
        }
    }
}

/// Whether `event` ends a list (then `listed` is set): the table is then
/// written whole from the new state.
fn list_done<K>(event: &Event<K>, listed: &mut bool) -> bool {
    let done = matches!(event, Event::InitDone);
    *listed |= done;
    done
}

/// A watch's next item, or `None` with the reason logged: an error (the
/// watch retries by itself) or, what a source never does while it lives,
/// the end of the stream.
pub(crate) fn event<K>(item: Option<Result<Event<K>, ClusterError>>) -> Option<Event<K>> {
    match item {
        Some(Ok(event)) => Some(event),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "watching the cluster failed; retrying");
            None
        }
        None => {
            tracing::error!("a cluster watch ended");
            None
        }
    }
}

/// Everything the loop carries from one event to the next.
struct Proxy<'a, C> {
    opts: &'a ProxyOptions,
    cluster: C,
    ctx: NodeContext,
    proxier: Proxier,
    state: ServiceState,
    nodes: Cache<Node>,
    /// The service ranges: addresses in them no Service has are dropped.
    service_cidrs: Cache<ServiceCIDR>,
    /// This node's own IPv4 addresses (read at each heartbeat).
    local_addresses: BTreeSet<Ipv4Addr>,
    /// Which lists have completed at least once.
    services_listed: bool,
    slices_listed: bool,
    /// Set when the whole table must be written from the state.
    full_sync_due: bool,
    /// Services changed since the last apply.
    dirty: BTreeSet<ServiceKey>,
    health: HealthServers,
    arp: Option<ArpResponder>,
    /// Reads this node's addresses (no externalIP may take one).
    netlink: Netlink,
    /// The Services an Event says are left out, and why.
    warned: BTreeMap<ServiceKey, String>,
}

impl<'a, C: ClusterState> Proxy<'a, C> {
    fn start(cluster: C, opts: &'a ProxyOptions) -> Result<Self> {
        let ctx = NodeContext {
            node: opts.node.clone(),
            cluster_cidrs: opts.cluster_cidrs.clone(),
            nodeport_addresses: opts.nodeport_addresses.resolve(&BTreeSet::new()),
            zone: None,
            service_cidrs: vec![],
        };
        let arp = match ArpResponder::start(&opts.iface) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(iface = %opts.iface, error = %e, "cannot answer ARP for LoadBalancer addresses on this node");
                None
            }
        };
        Ok(Proxy {
            opts,
            cluster,
            proxier: Proxier::new(ctx.clone()),
            ctx,
            state: ServiceState::new(opts.external_ip_cidrs.clone(), opts.reserved_ports.clone()),
            nodes: Cache::new(object_key),
            service_cidrs: Cache::new(object_key),
            local_addresses: BTreeSet::new(),
            services_listed: false,
            slices_listed: false,
            full_sync_due: true,
            dirty: BTreeSet::new(),
            health: HealthServers::default(),
            arp,
            netlink: Netlink::connect().context("connecting to rtnetlink")?,
            warned: BTreeMap::new(),
        })
    }

    /// Follows the watches until something fails hard.
    async fn follow(mut self) -> Result<()> {
        self.beat().await;
        self.local_addresses = self.local_addresses().await?;
        self.refresh_nodeport_addresses();
        let mut watches = Watches::new(&self.cluster);
        let mut check = tokio::time::interval(self.opts.drift_check);
        let mut beat = tokio::time::interval(self.opts.heartbeat);
        let mut rebuild = tokio::time::interval(self.opts.full_resync);
        check.tick().await;
        rebuild.tick().await;
        loop {
            tokio::select! {
                e = watches.services.next() => self.take_service(e),
                e = watches.slices.next() => self.take_slice(e),
                e = watches.nodes.next() => self.take_node(e),
                e = watches.service_cidrs.next() => self.take_service_cidr(e),
                _ = check.tick() => {
                    if self.opts.program && (!self.proxier.is_synced() || self.proxier.drifted()?) {
                        tracing::warn!("the Service table differs from what was applied; full sync");
                        self.full_sync_due = true;
                    }
                }
                _ = rebuild.tick() => {
                    tracing::info!(every_s = self.opts.full_resync.as_secs(), "periodic full sync");
                    self.full_sync_due = true;
                }
                _ = beat.tick() => {
                    self.beat().await;
                    self.announce().await?;
                    // This node's addresses change rarely: read at the heartbeat's pace.
                    self.local_addresses = self.local_addresses().await?;
                    self.refresh_node_addresses();
                    self.refresh_nodeport_addresses();
                }
            }
            self.take_ready(&mut watches);
            if !self.dirty.is_empty() && !self.full_sync_due && !self.state.is_listing() {
                // A Service and its EndpointSlice are usually written
                // together: give the second write its moment, so both
                // changes go into one transaction.
                tokio::time::sleep(COMPANION_WRITE_WAIT).await;
                self.take_ready(&mut watches);
            }
            self.sync().await?;
            if self.opts.program && self.proxier.is_synced() {
                self.opts.health.proxy_synced();
            }
        }
    }

    /// Takes in whatever the watches already hold.
    fn take_ready(&mut self, watches: &mut Watches) {
        loop {
            let mut took = false;
            while let Some(e) = watches.services.next().now_or_never() {
                self.take_service(e);
                took = true;
            }
            while let Some(e) = watches.slices.next().now_or_never() {
                self.take_slice(e);
                took = true;
            }
            while let Some(e) = watches.nodes.next().now_or_never() {
                self.take_node(e);
                took = true;
            }
            while let Some(e) = watches.service_cidrs.next().now_or_never() {
                self.take_service_cidr(e);
                took = true;
            }
            if !took {
                return;
            }
        }
    }

    fn take_service(&mut self, item: Option<Result<Event<Service>, ClusterError>>) {
        let Some(event) = event(item) else { return };
        self.full_sync_due |= list_done(&event, &mut self.services_listed);
        let dirty = self.state.service_event(event);
        self.dirty.extend(dirty);
    }

    fn take_slice(&mut self, item: Option<Result<Event<EndpointSlice>, ClusterError>>) {
        let Some(event) = event(item) else { return };
        self.full_sync_due |= list_done(&event, &mut self.slices_listed);
        let dirty = self.state.slice_event(event);
        self.dirty.extend(dirty);
    }

    fn take_node(&mut self, item: Option<Result<Event<Node>, ClusterError>>) {
        if event(item).is_some_and(|event| self.nodes.apply(event)) {
            self.refresh_node_addresses();
            self.refresh_zone();
        }
    }

    /// Writes what changed, once the lists are complete: the whole table
    /// when due, else the changed Services (a failure there falls back to
    /// the whole table).
    async fn sync(&mut self) -> Result<()> {
        if !(self.services_listed && self.slices_listed) || self.state.is_listing() {
            return Ok(());
        }
        if !self.opts.program {
            self.dirty.clear();
            self.full_sync_due = false;
            return self.announce().await;
        }
        if !self.full_sync_due {
            let dirty = std::mem::take(&mut self.dirty);
            if dirty.is_empty() {
                return Ok(());
            }
            match self.apply(dirty) {
                Ok(()) => return self.after_sync().await,
                Err(e) => {
                    self.opts.health.metrics.partial_sync_failed();
                    tracing::warn!(error = %format!("{e:#}"), "incremental Service sync failed; full sync");
                }
            }
        }
        self.full_sync_due = false;
        self.dirty.clear();
        let (state, ctx) = (&self.state, &self.ctx);
        let report = self.proxier.sync_all(|| state.plan_all(ctx))?;
        log_report(&report, &self.opts.health.metrics);
        release_freed_memory();
        self.after_sync().await
    }

    fn take_service_cidr(&mut self, item: Option<Result<Event<ServiceCIDR>, ClusterError>>) {
        if !event(item).is_some_and(|event| self.service_cidrs.apply(event)) {
            return;
        }
        let mut cidrs: Vec<Ipv4Net> = self
            .service_cidrs
            .values()
            .flat_map(|c| c.spec.iter().flat_map(|s| s.cidrs.iter().flatten()))
            .filter_map(|text| text.parse().ok())
            .collect();
        cidrs.sort();
        cidrs.dedup();
        if cidrs != self.ctx.service_cidrs {
            tracing::info!(?cidrs, "the service ranges changed; full sync");
            let ctx = NodeContext {
                service_cidrs: cidrs,
                ..self.ctx.clone()
            };
            self.change_context(ctx);
        }
    }

    /// Every node's InternalIP and ExternalIP (from the Nodes) and this
    /// node's own addresses, given to the externalIP rules.
    fn refresh_node_addresses(&mut self) {
        let mut addresses = self.local_addresses.clone();
        for node in self.nodes.values() {
            let listed = node.status.as_ref().and_then(|s| s.addresses.as_ref());
            addresses.extend(
                listed
                    .into_iter()
                    .flatten()
                    .filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP"))
                    .filter_map(|a| a.address.parse::<Ipv4Addr>().ok()),
            );
        }
        let dirty = self.state.set_node_addresses(addresses);
        self.dirty.extend(dirty);
    }

    /// Follows this node's addresses where NodePorts answer on those in
    /// some CIDRs: a change rewrites the table.
    fn refresh_nodeport_addresses(&mut self) {
        let wanted = self.opts.nodeport_addresses.resolve(&self.local_addresses);
        if wanted != self.ctx.nodeport_addresses {
            tracing::info!(addresses = ?wanted, "NodePorts answer on new addresses; full sync");
            let ctx = NodeContext {
                nodeport_addresses: wanted,
                ..self.ctx.clone()
            };
            self.change_context(ctx);
        }
    }

    /// Follows this node's zone (its Node's `topology.kubernetes.io/zone`
    /// label), which topology hints are read against.
    fn refresh_zone(&mut self) {
        let zone = self
            .nodes
            .values()
            .find(|node| node.metadata.name.as_deref() == Some(self.opts.node.as_str()))
            .and_then(|node| node.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned());
        if zone != self.ctx.zone {
            tracing::info!(zone = ?zone, "this node's zone changed; full sync");
            let ctx = NodeContext {
                zone,
                ..self.ctx.clone()
            };
            self.change_context(ctx);
        }
    }

    /// Plans with `ctx` from now on; a full sync rewrites the table for it.
    fn change_context(&mut self, ctx: NodeContext) {
        self.ctx = ctx;
        self.proxier.set_context(self.ctx.clone());
        self.full_sync_due = true;
    }

    /// Every IPv4 address of this node.
    async fn local_addresses(&self) -> Result<BTreeSet<Ipv4Addr>> {
        let mut out = BTreeSet::new();
        for link in self.netlink.links().await? {
            for address in self.netlink.addresses(link.index).await? {
                if let IpAddr::V4(v4) = address.addr() {
                    out.insert(v4);
                }
            }
        }
        Ok(out)
    }

    /// Renews the heartbeat; a failure is logged (the next beat retries
    /// before the heartbeat expires).
    async fn beat(&self) {
        let valid_for = self.opts.heartbeat * 3;
        if let Err(e) = self.cluster.beat(&self.opts.node, valid_for).await {
            tracing::warn!(error = %e, "renewing the node heartbeat failed; retrying at the next beat");
        }
    }

    fn apply(&mut self, mut dirty: BTreeSet<ServiceKey>) -> Result<()> {
        loop {
            let changes = dirty
                .iter()
                .map(|k| (k.clone(), self.state.plan(k, &self.ctx)))
                .collect();
            let report = self.proxier.apply(changes)?;
            log_report(&report, &self.opts.health.metrics);
            // Services refused an address another held may take it now.
            dirty = self.proxier.take_refused();
            if dirty.is_empty() {
                return Ok(());
            }
        }
    }

    async fn after_sync(&mut self) -> Result<()> {
        let not_programmed = self.not_programmed();
        self.opts.health.set_not_programmed(&not_programmed);
        self.warn_owners(not_programmed).await;
        self.health
            .update(&self.state.health_ports(&self.opts.node));
        self.announce().await
    }

    /// The Services left out: broken ones, and those nft rejected.
    fn not_programmed(&self) -> BTreeMap<ServiceKey, (Cause, String)> {
        let mut out: BTreeMap<_, _> = self
            .state
            .faulty()
            .into_iter()
            .map(|(key, why)| (key, (Cause::Invalid, why)))
            .collect();
        for (key, why) in self.proxier.rejected() {
            out.insert(key, (Cause::NftRejected, why));
        }
        out
    }

    /// Records an Event on each Service newly left out (or left out for a
    /// new reason); a failure is logged and tried again at the next sync.
    async fn warn_owners(&mut self, now: BTreeMap<ServiceKey, (Cause, String)>) {
        self.warned.retain(|key, _| now.contains_key(key));
        for (key, (cause, why)) in now {
            if self.warned.get(&key) == Some(&why) {
                continue;
            }
            let warning = Warning {
                reason: match cause {
                    Cause::Invalid => "InvalidService",
                    Cause::NftRejected => "FailedToProgram",
                },
                note: format!("not programmed on node {}: {why}", self.opts.node),
                node: self.opts.node.clone(),
            };
            match self
                .cluster
                .warn_service(&key.namespace, &key.name, &warning)
                .await
            {
                Ok(()) => {
                    self.warned.insert(key, why);
                }
                Err(e) => {
                    tracing::warn!(service = %key, error = %e, "recording an Event on the Service failed; trying again at the next sync");
                }
            }
        }
    }

    async fn announce(&mut self) -> Result<()> {
        let Some(arp) = &self.arp else {
            return Ok(());
        };
        let addresses = self
            .state
            .load_balancer_ips(self.opts.load_balancer_class.as_deref());
        if addresses.is_empty() && arp.announced().is_empty() {
            // No LoadBalancer anywhere: spare the read on every sync.
            return Ok(());
        }
        let live = self.cluster.live_nodes().await?;
        let mine = speaker::announced_by(&self.opts.node, &addresses, &live);
        if mine != arp.announced() {
            tracing::info!(addresses = ?mine, "announcing LoadBalancer addresses");
            arp.announce(&mine);
        }
        Ok(())
    }
}

/// A full sync builds tens of megabytes of rule text and frees it; glibc
/// keeps freed memory in the process unless asked to hand it back.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Logs a sync and counts it in the metrics.
fn log_report(report: &SyncReport, metrics: &Metrics) {
    let kind = if report.full {
        SyncKind::Full
    } else {
        SyncKind::Partial
    };
    metrics.synced(kind, report.elapsed);
    if report.full {
        tracing::info!(
            services = report.services,
            chains = report.chains_written,
            elements = report.elements_changed,
            stale_chains = report.stale_chains,
            stale_sets = report.stale_sets,
            ms = report.elapsed.as_secs_f64() * 1e3,
            "Service table fully synced"
        );
    } else if report.chains_written + report.elements_changed > 0 {
        tracing::info!(
            services = report.services,
            chains = report.chains_written,
            elements = report.elements_changed,
            flows_deleted = report.flows_deleted,
            ms = report.elapsed.as_secs_f64() * 1e3,
            "Services synced"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodeports_in_cidrs_follow_the_local_addresses_in_them() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let local: BTreeSet<Ipv4Addr> =
            [ip("127.0.0.1"), ip("198.18.0.11"), ip("10.244.1.1")].into();
        let in_cidrs = NodePorts::InCidrs(vec![
            "198.18.0.0/24".parse().unwrap(),
            "127.0.0.0/8".parse().unwrap(),
        ]);
        assert_eq!(
            in_cidrs.resolve(&local),
            NodePortAddresses::Only(vec![ip("198.18.0.11")]),
            "loopback never"
        );
        assert_eq!(
            in_cidrs.resolve(&BTreeSet::new()),
            NodePortAddresses::Only(vec![])
        );
        let all = NodePorts::InCidrs(vec!["0.0.0.0/0".parse().unwrap()]);
        assert_eq!(
            all.resolve(&local),
            NodePortAddresses::Only(vec![ip("10.244.1.1"), ip("198.18.0.11")])
        );
        let fixed = NodePorts::Fixed(NodePortAddresses::EveryLocal);
        assert_eq!(fixed.resolve(&local), NodePortAddresses::EveryLocal);
    }
}
