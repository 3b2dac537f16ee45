//! NetworkPolicy enforcement on this node: follow NetworkPolicies, Pods
//! and Namespaces through the cluster seam and keep table `ip
//! weft-policy` equal to what `weft_policy::rules` makes of them, written
//! whole in one transaction whenever the result changes, and again when
//! the table is found missing (drift).
//!
//! It runs on its own thread (`nft` runs must not delay the lease loop)
//! and decides nothing itself.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use weft_cluster::cache::{object_key, Cache};
use weft_cluster::{Cluster, ClusterError, Event, Watched};
use weft_datapath::nft::{self, Family};
use weft_policy::model::{self, namespace_labels, NamespaceLabels, Policy};
use weft_policy::rules;

use crate::proxy::event;

/// How often the table is checked for drift.
const DRIFT_CHECK: Duration = Duration::from_secs(10);

/// Starts enforcement for `node`; it retries after errors and never
/// returns while the agent runs.
pub fn spawn<C: Cluster>(cluster: C, node: String) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("policy".into())
        .spawn(move || loop {
            if let Err(e) = run(&cluster, &node) {
                tracing::error!(error = %format!("{e:#}"), "NetworkPolicy enforcement failed; starting over in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        })
}

fn run<C: Cluster>(cluster: &C, node: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(follow(cluster, node))
}

/// The caches of the three kinds.
struct State {
    policies: Cache<NetworkPolicy>,
    pods: Cache<Pod>,
    namespaces: Cache<Namespace>,
}

impl State {
    fn synced(&self) -> bool {
        self.policies.is_synced() && self.pods.is_synced() && self.namespaces.is_synced()
    }

    /// The table for `node` as the caches stand. Without policies it does
    /// not depend on pods: they are not read then (a pod event on a node
    /// without policies costs nothing).
    fn script(&self, node: &str) -> String {
        let policies: Vec<Policy> = self.policies.values().map(Policy::read).collect();
        if policies.is_empty() {
            return rules::script(&[], &[], &NamespaceLabels::new(), node);
        }
        for policy in &policies {
            for problem in &policy.problems {
                tracing::debug!(policy = %policy.key, %problem, "part of a NetworkPolicy matches nothing");
            }
        }
        let pods: Vec<model::Pod> = self.pods.values().map(model::Pod::read).collect();
        let namespaces = namespace_labels(self.namespaces.values());
        rules::script(&policies, &pods, &namespaces, node)
    }
}

async fn follow<C: Cluster>(cluster: &C, node: &str) -> Result<()> {
    let mut policies = cluster.watch::<NetworkPolicy>();
    let mut pods = cluster.watch::<Pod>();
    let mut namespaces = cluster.watch::<Namespace>();
    let mut state = State {
        policies: Cache::new(object_key),
        pods: Cache::new(object_key),
        namespaces: Cache::new(object_key),
    };
    let mut applied: Option<String> = None;
    let mut check = tokio::time::interval(DRIFT_CHECK);
    loop {
        tokio::select! {
            e = policies.next() => take(&mut state.policies, e),
            e = pods.next() => take(&mut state.pods, e),
            e = namespaces.next() => take(&mut state.namespaces, e),
            _ = check.tick() => {
                if !nft::chain_exists(Family::Ip, rules::TABLE, "forward")? {
                    applied = None;
                }
            }
        }
        // Take in whatever else is there, then write once.
        loop {
            let mut took = false;
            while let Some(e) = policies.next().now_or_never() {
                take(&mut state.policies, e);
                took = true;
            }
            while let Some(e) = pods.next().now_or_never() {
                take(&mut state.pods, e);
                took = true;
            }
            while let Some(e) = namespaces.next().now_or_never() {
                take(&mut state.namespaces, e);
                took = true;
            }
            if !took {
                break;
            }
        }
        if !state.synced() {
            continue;
        }
        let script = state.script(node);
        if applied.as_ref() != Some(&script) {
            nft::apply(&script, None).context("writing the NetworkPolicy table")?;
            tracing::info!("NetworkPolicy table written");
            applied = Some(script);
        }
    }
}

/// Takes one watch item into `cache` (errors are logged by [`event`]).
fn take<K: Watched + PartialEq>(
    cache: &mut Cache<K>,
    item: Option<Result<Event<K>, ClusterError>>,
) {
    if let Some(event) = event(item) {
        cache.apply(event);
    }
}
