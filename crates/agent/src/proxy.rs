//! The Service proxy's loop inside the agent: list Services and
//! EndpointSlices, full sync, then follow both watches and apply only the
//! Services that changed. Also renews the node heartbeat, announces the
//! LoadBalancer addresses this node owns (ARP) and serves the
//! healthCheckNodePorts. It reads every node's InternalIP and this node's
//! addresses (at each full sync and heartbeat) so no externalIP can take
//! one, and shows the Services nft rejected on the agent's `/readyz`.
//!
//! It runs on its own thread so `nft` runs never delay the lease loop.
//! Any failure to apply incrementally, a compacted watch, drift found by
//! the periodic check or the (hourly by default) full-resync timer leads to
//! a fresh list and full sync.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use weft_datapath::arp::ArpResponder;
use weft_datapath::Netlink;
use weft_proxy::health::HealthServers;
use weft_proxy::{NodeContext, Proxier, ServiceKey, SyncReport};
use weft_store::{Store, StoreError};

use crate::health::Health;
use crate::services::{ServiceState, SERVICE_KIND, SLICE_KIND};
use crate::speaker;

#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where the Services nft rejected are shown (`/readyz`).
    pub health: Arc<Health>,
    /// The agent's `/healthz` port, which no externalIP may take.
    pub health_port: u16,
    /// `--external-ip-cidrs`: where externalIPs may lie (empty: anywhere).
    pub external_ip_cidrs: Vec<Ipv4Net>,
    pub node: String,
    pub store: PathBuf,
    /// Where LoadBalancer addresses are announced (the node's underlay).
    pub iface: String,
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// How often a store watch looks for changes where it cannot be woken.
    pub watch_poll: Duration,
    /// How often the table is checked for drift.
    pub resync: Duration,
    pub heartbeat: Duration,
    /// How often the table is rebuilt from a fresh list regardless (element
    /// drift is invisible to the cheap check).
    pub full_resync: Duration,
}

/// How long after a change the proxy waits for its companion (the
/// EndpointSlice of a new Service, or the reverse) before applying: a
/// writer puts them one after the other, well within this.
const COMPANION_WRITE_WAIT: Duration = Duration::from_millis(2);

/// Starts the proxy on its own thread; it retries after errors and never
/// returns while the agent runs.
pub fn spawn(opts: ProxyOptions) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || loop {
            if let Err(e) = run(&opts) {
                tracing::error!(error = %format!("{e:#}"), "Service proxy failed; starting over in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        })
}

fn run(opts: &ProxyOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts))
}

/// Everything the loop carries from one event to the next.
struct Proxy<'a> {
    opts: &'a ProxyOptions,
    store: Store,
    ctx: NodeContext,
    proxier: Proxier,
    state: ServiceState,
    health: HealthServers,
    arp: Option<ArpResponder>,
    /// Reads this node's addresses (no externalIP may take one).
    netlink: Netlink,
}

async fn run_async(opts: &ProxyOptions) -> Result<()> {
    // The agent's own loop created the store; a proxy that found it gone
    // must not make a new empty one beside the cluster's (split brain).
    let store = Store::open_existing(&opts.store)
        .with_context(|| format!("opening the cluster store {}", opts.store.display()))?;
    let ctx = NodeContext {
        node: opts.node.clone(),
        cluster_cidrs: opts.cluster_cidrs.clone(),
    };
    let arp = match ArpResponder::start(&opts.iface) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(iface = %opts.iface, error = %e, "cannot answer ARP for LoadBalancer addresses on this node");
            None
        }
    };
    let mut proxy = Proxy {
        opts,
        store,
        proxier: Proxier::new(ctx.clone()),
        ctx,
        state: ServiceState::default(),
        health: HealthServers::default(),
        arp,
        netlink: Netlink::connect().context("connecting to rtnetlink")?,
    };
    speaker::beat(&proxy.store, &opts.node, opts.heartbeat * 3)?;
    loop {
        proxy.follow().await?;
    }
}

impl Proxy<'_> {
    /// List, full sync, then apply watch events until something calls for a
    /// fresh start (returns Ok) or fails hard (returns Err).
    async fn follow(&mut self) -> Result<()> {
        let revision = self.load().await?;
        let (state, ctx) = (&self.state, &self.ctx);
        let report = self.proxier.sync_all(|| state.plan_all(ctx))?;
        log_report(&report);
        release_freed_memory();
        self.after_sync()?;
        let poll = self.opts.watch_poll;
        let mut services = self.store.watch(SERVICE_KIND, revision, poll);
        let mut slices = self.store.watch(SLICE_KIND, revision, poll);
        let mut check = tokio::time::interval(self.opts.resync);
        let mut beat = tokio::time::interval(self.opts.heartbeat);
        let mut rebuild = tokio::time::interval(self.opts.full_resync);
        check.tick().await;
        rebuild.tick().await;
        loop {
            let dirty: BTreeSet<ServiceKey> = tokio::select! {
                events = services.next() => match events {
                    Ok(events) => self.state.events(&events),
                    Err(StoreError::Compacted { .. }) => return Ok(()),
                    Err(e) => return Err(e.into()),
                },
                events = slices.next() => match events {
                    Ok(events) => self.state.events(&events),
                    Err(StoreError::Compacted { .. }) => return Ok(()),
                    Err(e) => return Err(e.into()),
                },
                _ = check.tick() => {
                    if !self.proxier.is_synced() || self.proxier.drifted()? {
                        tracing::warn!("the Service table differs from what was applied; full sync");
                        return Ok(());
                    }
                    BTreeSet::new()
                }
                _ = rebuild.tick() => {
                    tracing::info!(every_s = self.opts.full_resync.as_secs(), "periodic full sync");
                    return Ok(());
                }
                _ = beat.tick() => {
                    speaker::beat(&self.store, &self.opts.node, self.opts.heartbeat * 3)?;
                    self.announce()?;
                    // Nodes come and go rarely: checked at the heartbeat's pace.
                    let addresses = self.node_addresses().await?;
                    self.state.set_node_addresses(addresses)
                }
            };
            if dirty.is_empty() {
                continue;
            }
            // A Service and its EndpointSlice are usually written together:
            // give the second write its moment (the store wakes us at the
            // first), then take what the other watch holds, so both changes
            // go into one transaction (polling a watcher once is a store
            // read, it never waits).
            tokio::time::sleep(COMPANION_WRITE_WAIT).await;
            let mut dirty = dirty;
            for watcher in [&mut services, &mut slices] {
                match tokio::time::timeout(Duration::ZERO, watcher.next()).await {
                    Ok(Ok(events)) => dirty.extend(self.state.events(&events)),
                    Ok(Err(StoreError::Compacted { .. })) => return Ok(()),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => {}
                }
            }
            if let Err(e) = self.apply(dirty) {
                tracing::warn!(error = %format!("{e:#}"), "incremental Service sync failed; full sync");
                return Ok(());
            }
            self.after_sync()?;
        }
    }

    /// Lists both kinds into a fresh cache; returns the revision to watch
    /// from (the first list's: replaying a few events is harmless).
    async fn load(&mut self) -> Result<u64> {
        let mut state = ServiceState::new(
            self.opts.external_ip_cidrs.clone(),
            [self.opts.health_port].into(),
        );
        state.set_node_addresses(self.node_addresses().await?);
        let revision = self
            .store
            .list_each(SERVICE_KIND, |_, _, json| state.load(SERVICE_KIND, json))?;
        self.store
            .list_each(SLICE_KIND, |_, _, json| state.load(SLICE_KIND, json))?;
        state.log_refusals();
        self.state = state;
        Ok(revision)
    }

    /// Every node's InternalIP (from the Node objects) and every IPv4
    /// address of this node.
    async fn node_addresses(&self) -> Result<BTreeSet<Ipv4Addr>> {
        let mut out = BTreeSet::new();
        self.store.list_each("Node", |_, _, json| {
            let Ok(node) = serde_json::from_str::<Node>(json) else {
                return;
            };
            let listed = node.status.and_then(|s| s.addresses).unwrap_or_default();
            out.extend(
                listed
                    .iter()
                    .filter(|a| matches!(a.type_.as_str(), "InternalIP" | "ExternalIP"))
                    .filter_map(|a| a.address.parse::<Ipv4Addr>().ok()),
            );
        })?;
        for link in self.netlink.links().await? {
            for address in self.netlink.addresses(link.index).await? {
                if let IpAddr::V4(v4) = address.addr() {
                    out.insert(v4);
                }
            }
        }
        Ok(out)
    }

    fn apply(&mut self, mut dirty: BTreeSet<ServiceKey>) -> Result<()> {
        loop {
            let changes = dirty
                .iter()
                .map(|k| (k.clone(), self.state.plan(k, &self.ctx)))
                .collect();
            let report = self.proxier.apply(changes)?;
            log_report(&report);
            // Services refused an address another held may take it now.
            dirty = self.proxier.take_refused();
            if dirty.is_empty() {
                return Ok(());
            }
        }
    }

    fn after_sync(&mut self) -> Result<()> {
        let rejected = self
            .proxier
            .rejected()
            .into_iter()
            .map(|(key, reason)| format!("Service {key} not programmed: {reason}"))
            .collect();
        self.opts.health.set_rejected_services(rejected);
        self.health
            .update(&self.state.health_ports(&self.opts.node));
        self.announce()
    }

    fn announce(&mut self) -> Result<()> {
        let Some(arp) = &self.arp else {
            return Ok(());
        };
        let addresses = self.state.load_balancer_ips();
        if addresses.is_empty() && arp.announced().is_empty() {
            // No LoadBalancer anywhere: spare the store read on every sync.
            return Ok(());
        }
        let live = speaker::live_nodes(&self.store, speaker::now())?;
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

fn log_report(report: &SyncReport) {
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
