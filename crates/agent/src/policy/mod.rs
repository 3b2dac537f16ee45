//! NetworkPolicy enforcement on this node: follow NetworkPolicies, Pods
//! and Namespaces through the cluster seam and keep table `ip
//! weft-policy` equal to what `weft_policy::rules` makes of them: written
//! whole in one transaction when its structure changes (and again when
//! the table is found missing, and every five minutes), else only its
//! changed set elements ([`writer`]).
//!
//! New pods pass through [`gate`]: weft-cni's ADD waits until the rules
//! that hold for the pod are written with its address, which the agent
//! learns there before the Pod's status shows it. Until the status does,
//! the address weft-cni reported is the pod's (and no other pod's).
//!
//! It runs on its own thread (`nft` runs must not delay the lease loop)
//! and decides nothing itself.

pub mod denials;
pub mod gate;
pub mod writer;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use tokio::sync::mpsc;
use weft_cluster::cache::{object_key, Cache};
use weft_cluster::{Cluster, ClusterError, Event, Watched};
use weft_datapath::nflog::Flow;
use weft_datapath::nft::{self, Family};
use weft_policy::api::ClusterNetworkPolicy;
use weft_policy::model::{self, namespace_labels, NamespaceLabels, Policies};
use weft_policy::rules;

use crate::proxy::event;
use gate::{Asked, Gate};

/// How often the table is checked for drift.
const DRIFT_CHECK: Duration = Duration::from_secs(10);

/// How often the table is written whole anyway: repairs set elements
/// changed by hand, which the drift check of chains cannot see (the
/// rewrite is one transaction, so traffic is not disturbed).
const FULL_RESYNC: Duration = Duration::from_secs(300);

/// Starts enforcement for `node`, answering new pods at `socket` (if
/// any); it retries after errors and never returns while the agent runs.
pub fn spawn<C: Cluster>(
    cluster: C,
    node: String,
    socket: Option<PathBuf>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("policy".into())
        .spawn(move || {
            let mut denied = denials::follow();
            loop {
                if let Err(e) = run(&cluster, &node, socket.as_deref(), &mut denied) {
                    tracing::error!(error = %format!("{e:#}"), "NetworkPolicy enforcement failed; starting over in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
}

fn run<C: Cluster>(
    cluster: &C,
    node: &str,
    socket: Option<&Path>,
    denied: &mut mpsc::UnboundedReceiver<Flow>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    check_bridge_netfilter();
    rt.block_on(follow(cluster, node, socket, denied))
}

/// The gate at `socket`, if there is to be one and it can be had.
/// Without it no pod can start here (weft-cni answers "try again later"),
/// but the pods already running keep their rules; it is tried again at
/// every drift check.
fn bind_gate(socket: Option<&Path>) -> Option<Gate> {
    let path = socket?;
    match Gate::bind(path) {
        Ok(gate) => Some(gate),
        Err(e) => {
            tracing::error!(error = %e, socket = %path.display(), "cannot listen for new pods; none can start on this node until this is fixed");
            None
        }
    }
}

/// Pods of one node talk across its bridge; the table's hooks see that
/// traffic only while br_netfilter passes it to them.
const BRIDGE_NETFILTER: &str = "net/bridge/bridge-nf-call-iptables";

/// What [`check_bridge_netfilter`] found.
#[derive(Debug, PartialEq, Eq)]
enum BridgeNetfilter {
    On,
    TurnedOn,
    /// br_netfilter is not loaded.
    Missing,
    CannotTurnOn(String),
}

/// Turns on bridge-nf-call-iptables in this namespace when it is off,
/// and says loudly when it cannot: policies would then hold only between
/// nodes.
fn check_bridge_netfilter() -> BridgeNetfilter {
    let found = match weft_datapath::sysctl::read(BRIDGE_NETFILTER) {
        None => BridgeNetfilter::Missing,
        Some(on) if on == "1" => BridgeNetfilter::On,
        Some(_) => match weft_datapath::sysctl::ensure(BRIDGE_NETFILTER, "1") {
            Ok(()) => BridgeNetfilter::TurnedOn,
            Err(e) => BridgeNetfilter::CannotTurnOn(e.to_string()),
        },
    };
    match &found {
        BridgeNetfilter::On => {}
        BridgeNetfilter::TurnedOn => {
            tracing::info!("turned on {BRIDGE_NETFILTER}: NetworkPolicy must see traffic between pods of this node")
        }
        BridgeNetfilter::Missing => tracing::error!(
            "br_netfilter is not loaded: NetworkPolicy is not enforced between pods of this node; \
             load it (modprobe br_netfilter, and add it to /etc/modules-load.d) and restart the agent"
        ),
        BridgeNetfilter::CannotTurnOn(e) => tracing::error!(
            error = %e,
            "NetworkPolicy is not enforced between pods of this node until {BRIDGE_NETFILTER} is 1"
        ),
    }
    found
}

/// The caches of the four kinds, and the addresses of pods started
/// since their status last said where they are.
struct State {
    policies: Cache<NetworkPolicy>,
    cluster_policies: Cache<ClusterNetworkPolicy>,
    pods: Cache<Pod>,
    namespaces: Cache<Namespace>,
    started: gate::Started,
}

impl State {
    fn synced(&self) -> bool {
        self.policies.is_synced()
            && self.cluster_policies.is_synced()
            && self.pods.is_synced()
            && self.namespaces.is_synced()
    }

    fn policies(&self) -> Policies {
        Policies::read(self.policies.values(), self.cluster_policies.values())
    }

    /// The table for `node` as the caches stand. Without policies it does
    /// not depend on pods: they are not read then (a pod event on a node
    /// without policies costs nothing).
    fn table(&self, node: &str) -> rules::Table {
        let policies = self.policies();
        if policies.is_empty() {
            return rules::table(&policies, &[], &NamespaceLabels::new(), node);
        }
        // Worded only when someone reads it: this runs on every change.
        if tracing::enabled!(tracing::Level::DEBUG) {
            for problem in policies.problems() {
                tracing::debug!(%problem, "part of a policy could not be read");
            }
        }
        let namespaces = namespace_labels(self.namespaces.values());
        rules::table(&policies, &self.pods(), &namespaces, node)
    }

    /// The pods with their addresses: a started pod's is the one weft-cni
    /// reported, which no other pod holds any more (its earlier owner is
    /// gone, whatever its stale status says).
    fn pods(&self) -> Vec<model::Pod> {
        let claimed: HashSet<IpAddr> = self.started.values().flatten().copied().collect();
        self.pods
            .values()
            .filter(|api| !model::is_finished(api))
            .map(|api| {
                let mut pod = model::Pod::read(api);
                match self.started.get(&object_key(api)) {
                    Some(ips) => {
                        pod.ip = ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied()
                    }
                    None if pod.ip.is_some_and(|ip| claimed.contains(&ip)) => pod.ip = None,
                    None => {}
                }
                pod
            })
            .collect()
    }

    /// Logs why `flow` was denied, unless it was lately.
    fn report_denial(&self, flow: Flow, recent: &mut denials::Recent) {
        if !self.synced() || !recent.is_new(flow, std::time::Instant::now()) {
            return;
        }
        let namespaces = namespace_labels(self.namespaces.values());
        let line = denials::explain(&flow, &self.policies(), &self.pods(), &namespaces);
        tracing::warn!(target: denials::TARGET, "{line}");
    }

    /// Takes in the waiting pods the caches know (`(admitted, still
    /// waiting)`), and forgets started pods whose status caught up or
    /// that are gone.
    fn admit(&mut self, waiting: Vec<Asked>, node: &str) -> (Vec<Asked>, Vec<Asked>) {
        let (known, unknown): (Vec<Asked>, Vec<Asked>) = waiting
            .into_iter()
            .partition(|asked| self.synced() && self.knows(asked, node));
        for asked in &known {
            // An address belongs to one pod: one that held it before
            // (its ADD failed, or it was deleted) is not it any more.
            self.started
                .retain(|_, ips| !ips.iter().any(|ip| asked.ips.contains(ip)));
            self.started.insert(asked.key.clone(), asked.ips.clone());
        }
        // Before the pods are listed, every started pod would look gone.
        if self.synced() {
            self.settle();
        }
        (known, unknown)
    }

    /// Whether the cache holds the pod `asked` is for, as bound to `node`
    /// (the watch may not show the binding yet) and, when weft-cni named
    /// its UID, that very pod (not an earlier one of the same name).
    fn knows(&self, asked: &Asked, node: &str) -> bool {
        self.pods.get(&asked.key).is_some_and(|pod| {
            let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
            let same = asked
                .uid
                .as_ref()
                .is_none_or(|uid| pod.metadata.uid.as_ref() == Some(uid));
            bound && same
        })
    }

    /// Forgets the started pods whose status shows their address, or
    /// that are gone.
    fn settle(&mut self) {
        let pods = &self.pods;
        self.started.retain(|key, ips| {
            pods.get(key).is_some_and(|pod| {
                let status = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
                !status.is_some_and(|ip| ips.iter().any(|own| own.to_string() == ip))
            })
        });
    }
}

async fn follow<C: Cluster>(
    cluster: &C,
    node: &str,
    socket: Option<&Path>,
    denied: &mut mpsc::UnboundedReceiver<Flow>,
) -> Result<()> {
    let mut gate = bind_gate(socket);
    let mut policies = cluster.watch::<NetworkPolicy>();
    let mut cluster_policies = cluster.watch::<ClusterNetworkPolicy>();
    let mut pods = cluster.watch::<Pod>();
    let mut namespaces = cluster.watch::<Namespace>();
    let mut state = State {
        policies: Cache::new(object_key),
        cluster_policies: Cache::new(object_key),
        pods: Cache::new(object_key),
        namespaces: Cache::new(object_key),
        started: gate.as_ref().map(Gate::started).unwrap_or_default(),
    };
    let mut waiting: Vec<Asked> = Vec::new();
    let mut recent = denials::Recent::default();
    let mut applied: Option<rules::Table> = None;
    let mut check = tokio::time::interval(DRIFT_CHECK);
    let mut written_whole = std::time::Instant::now();
    loop {
        let next_deadline = waiting.iter().map(|a| a.deadline).min();
        tokio::select! {
            e = policies.next() => take(&mut state.policies, e),
            e = cluster_policies.next() => take(&mut state.cluster_policies, e),
            e = pods.next() => take(&mut state.pods, e),
            e = namespaces.next() => take(&mut state.namespaces, e),
            asked = next_asked(&mut gate) => waiting.push(asked),
            _ = until(next_deadline) => {}
            Some(flow) = denied.recv() => {
                // Changes nothing: explained, and on.
                state.report_denial(flow, &mut recent);
                continue;
            }
            _ = check.tick() => {
                if !nft::chain_exists(Family::Ip, rules::TABLE, "forward")?
                    || written_whole.elapsed() >= FULL_RESYNC
                {
                    applied = None;
                }
                if gate.is_none() {
                    gate = bind_gate(socket);
                    for (pod, ips) in gate.iter().flat_map(Gate::started) {
                        state.started.entry(pod).or_insert(ips);
                    }
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
            while let Some(e) = cluster_policies.next().now_or_never() {
                take(&mut state.cluster_policies, e);
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
        let (admitted, unknown) = state.admit(std::mem::take(&mut waiting), node);
        if let Some(gate) = gate.as_mut() {
            gate.keep(&state.started);
        }
        waiting = refuse_overdue(unknown, state.synced());
        if !state.synced() {
            continue;
        }
        let table = state.table(node);
        if applied.as_ref() != Some(&table) {
            let written = writer::write(applied.as_ref(), &table)
                .context("writing the NetworkPolicy table")?;
            match written {
                writer::Written::Whole => {
                    written_whole = std::time::Instant::now();
                    tracing::info!("NetworkPolicy table written")
                }
                other => tracing::debug!(?other, "NetworkPolicy set elements written"),
            }
            applied = Some(table);
        }
        for asked in admitted {
            tracing::debug!(pod = %asked.key, "new pod's NetworkPolicy in place");
            asked.admit();
        }
    }
}

/// The next pod asking to start, or never without a gate.
async fn next_asked(gate: &mut Option<Gate>) -> Asked {
    match gate {
        Some(gate) => gate.next().await,
        None => std::future::pending().await,
    }
}

async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Refuses the waiting pods whose patience ran out; the rest wait on.
fn refuse_overdue(waiting: Vec<Asked>, synced: bool) -> Vec<Asked> {
    let now = tokio::time::Instant::now();
    let (overdue, rest): (Vec<Asked>, Vec<Asked>) =
        waiting.into_iter().partition(|a| a.deadline <= now);
    for asked in overdue {
        let why = if synced {
            format!(
                "pod {} is not in the agent's view of the cluster after {:?} (is the API server slow or unreachable?)",
                asked.key,
                gate::PATIENCE
            )
        } else {
            "the agent is still reading the cluster's policies, Pods and Namespaces".into()
        };
        asked.refuse(why);
    }
    rest
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

#[cfg(test)]
mod tests {
    use super::*;
    use gate::Asked;
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, ip: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("prod".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            status: ip.map(|ip| PodStatus {
                pod_ip: Some(ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn state(pods: Vec<Pod>) -> State {
        let mut state = State {
            policies: Cache::new(object_key),
            cluster_policies: Cache::new(object_key),
            pods: Cache::new(object_key),
            namespaces: Cache::new(object_key),
            started: gate::Started::new(),
        };
        state.pods.apply(Event::Init);
        for p in pods {
            state.pods.apply(Event::InitApply(p));
        }
        state.pods.apply(Event::InitDone);
        // No policies of either kind, no namespaces: listed, and empty.
        state.policies.apply(Event::Init);
        state.policies.apply(Event::InitDone);
        state.cluster_policies.apply(Event::Init);
        state.cluster_policies.apply(Event::InitDone);
        state.namespaces.apply(Event::Init);
        state.namespaces.apply(Event::InitDone);
        state
    }

    fn ip_of(state: &State, name: &str) -> Option<IpAddr> {
        state.pods().into_iter().find(|p| p.name == name)?.ip
    }

    #[test]
    fn a_started_pod_has_the_address_weft_cni_reported_and_nobody_else_does() {
        // `old` left 10.244.1.5 behind in a stale status; `new` got it.
        let mut state = state(vec![pod("old", Some("10.244.1.5")), pod("new", None)]);
        let reported: IpAddr = "10.244.1.5".parse().unwrap();
        state.started.insert("prod/new".into(), vec![reported]);
        state.settle();
        assert_eq!(ip_of(&state, "new"), Some(reported));
        assert_eq!(ip_of(&state, "old"), None);

        // The status catches up: the report is no longer needed.
        state
            .pods
            .apply(Event::Apply(pod("new", Some("10.244.1.5"))));
        state.settle();
        assert!(state.started.is_empty());
        assert_eq!(ip_of(&state, "new"), Some(reported));
    }

    #[test]
    fn bridged_traffic_is_turned_over_to_the_table() {
        let mut scratch = weft_datapath::scratch::Namespaces::new("wag-brnf");
        let (_, ns) = scratch.add("n");
        let found = ns
            .run_in(|| {
                weft_datapath::sysctl::ensure(BRIDGE_NETFILTER, "0").unwrap();
                let first = check_bridge_netfilter();
                (
                    first,
                    check_bridge_netfilter(),
                    weft_datapath::sysctl::read(BRIDGE_NETFILTER),
                )
            })
            .unwrap();
        assert_eq!(
            found,
            (
                BridgeNetfilter::TurnedOn,
                BridgeNetfilter::On,
                Some("1".into())
            )
        );
    }

    fn bound(name: &str, uid: &str, node: &str) -> Pod {
        let mut p = pod(name, None);
        p.metadata.uid = Some(uid.into());
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_new_pod_is_admitted_once_it_is_bound_here_and_is_the_pod_asked_for() {
        let mut state = state(vec![
            bound("here", "u1", "node-1"),
            bound("elsewhere", "u2", "node-2"),
            pod("unbound", None),
        ]);
        let asks = [
            Asked::new("prod/here", Some("u1"), &["10.244.1.7"]).0,
            Asked::new("prod/here", Some("older"), &["10.244.1.8"]).0,
            Asked::new("prod/elsewhere", None, &["10.244.1.9"]).0,
            Asked::new("prod/unbound", None, &["10.244.1.10"]).0,
        ];
        let (admitted, waiting) = state.admit(asks.into(), "node-1");
        let keys = |v: &[Asked]| v.iter().map(|a| a.ips[0].to_string()).collect::<Vec<_>>();
        assert_eq!(keys(&admitted), ["10.244.1.7"]);
        assert_eq!(waiting.len(), 3);
    }

    #[test]
    fn an_address_belongs_to_the_pod_that_got_it_last() {
        let mut state = state(vec![bound("a", "ua", "node-1"), bound("b", "ub", "node-1")]);
        let (a, _) = Asked::new("prod/a", None, &["10.244.1.7"]);
        let (b, _) = Asked::new("prod/b", None, &["10.244.1.7"]);
        state.admit(vec![a], "node-1");
        state.admit(vec![b], "node-1");
        assert_eq!(state.started.keys().collect::<Vec<_>>(), ["prod/b"]);
        assert_eq!(ip_of(&state, "a"), None);
    }

    #[test]
    fn finished_pods_stand_for_no_address() {
        let mut done = pod("job", Some("10.244.1.5"));
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let state = state(vec![done]);
        assert!(state.pods().is_empty());
    }

    #[test]
    fn kept_addresses_wait_for_the_pods_to_be_listed() {
        let mut state = state(vec![pod("new", None)]);
        state.pods = Cache::new(object_key);
        state
            .started
            .insert("prod/new".into(), vec!["10.244.1.6".parse().unwrap()]);
        let (admitted, waiting) = state.admit(Vec::new(), "node-1");
        assert!(admitted.is_empty() && waiting.is_empty());
        assert_eq!(
            state.started.len(),
            1,
            "forgotten before the pods were listed"
        );
    }

    #[test]
    fn a_started_pod_that_is_gone_is_forgotten() {
        let mut state = state(vec![pod("new", None)]);
        state
            .started
            .insert("prod/new".into(), vec!["10.244.1.6".parse().unwrap()]);
        state.settle();
        assert_eq!(state.started.len(), 1, "forgotten while still starting");
        state.pods.apply(Event::Delete(pod("new", None)));
        state.settle();
        assert!(state.started.is_empty());
    }
}
