//! Whether one connection is allowed: the source's egress and the
//! destination's ingress are decided apart, and both must allow it.
//!
//! Each direction is decided by tiers, as `policy.networking.k8s.io`
//! orders them:
//! 1. the Admin tier's ClusterNetworkPolicies that apply to the pod, by
//!    priority: the first rule that matches Accepts or Denies, or Passes
//!    to the next tier;
//! 2. NetworkPolicy: a pod no policy selects for the direction is not
//!    isolated in it; a pod that some policy isolates accepts only what a
//!    rule of any policy selecting it allows (policies add up), and
//!    nothing further is asked;
//! 3. the Baseline tier, as the Admin tier (Pass: allowed);
//! 4. allowed.
//!
//! Traffic from the destination's own node is always allowed (kubelet
//! probes; the datapath never sees it). Replies are not connections: the
//! datapath lets them through by connection tracking.

use std::fmt;
use std::net::IpAddr;

use crate::model::{
    Action, ClusterPolicy, NamespaceLabels, Peer, Pod, Policies, Policy, PolicyKey, PortMatch,
    PortSpec, Protocol, Rule, Tier,
};

/// One side of a connection.
#[derive(Debug, Clone, Copy)]
pub enum Party<'a> {
    Pod(&'a Pod),
    /// An address that is no (pod-network) pod: outside the cluster, a
    /// node, a hostNetwork pod.
    Address(IpAddr),
    /// The destination pod's own node (its kubelet, its host processes).
    OwnNode,
}

impl Party<'_> {
    fn ip(&self) -> Option<IpAddr> {
        match self {
            Party::Pod(pod) => pod.ip,
            Party::Address(ip) => Some(*ip),
            Party::OwnNode => None,
        }
    }

    /// The pod policies apply to, if this side is one.
    fn subject(&self) -> Option<&Pod> {
        match self {
            Party::Pod(pod) if !pod.host_network => Some(pod),
            _ => None,
        }
    }
}

impl fmt::Display for Party<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Pod(pod) => write!(f, "{pod}"),
            Party::Address(ip) => write!(f, "{ip}"),
            Party::OwnNode => f.write_str("its own node"),
        }
    }
}

/// A new connection, after Service translation (to the backend pod).
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub from: Party<'a>,
    pub to: Party<'a>,
    pub port: u16,
    pub protocol: Protocol,
}

/// What one direction decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy selects the pod for this direction (or there is no pod
    /// on this side).
    NotIsolated,
    /// The first rule that allows it: the policy and the rule's index.
    Allowed { policy: PolicyKey, rule: usize },
    /// Ingress from the pod's own node: always allowed.
    OwnNode,
    /// Isolated by these policies, and no rule of theirs allows it.
    Denied { isolated_by: Vec<PolicyKey> },
    /// A ClusterNetworkPolicy's rule Accepted or Denied it.
    Cluster {
        policy: String,
        tier: Tier,
        /// The rule's index and name.
        rule: (usize, Option<String>),
        action: Action,
    },
}

impl Decision {
    pub fn allows(&self) -> bool {
        !matches!(
            self,
            Decision::Denied { .. }
                | Decision::Cluster {
                    action: Action::Deny,
                    ..
                }
        )
    }
}

/// Both directions' decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The source pod's egress.
    pub egress: Decision,
    /// The destination pod's ingress.
    pub ingress: Decision,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }
}

/// Decides `conn` under `policies`, with the namespaces' labels.
pub fn verdict(policies: &Policies, namespaces: &NamespaceLabels, conn: &Connection) -> Verdict {
    let egress = match conn.from.subject() {
        Some(pod) => decide(policies, namespaces, pod, false, |policy_ns, rule| {
            allows(rule, policy_ns, &conn.to, conn, namespaces)
        }),
        None => Decision::NotIsolated,
    };
    let ingress = match (conn.to.subject(), conn.from) {
        (Some(_), Party::OwnNode) => Decision::OwnNode,
        (Some(pod), _) => decide(policies, namespaces, pod, true, |policy_ns, rule| {
            allows(rule, policy_ns, &conn.from, conn, namespaces)
        }),
        (None, _) => Decision::NotIsolated,
    };
    Verdict { egress, ingress }
}

/// One direction of `pod`, tier by tier; `allows(policy namespace,
/// rule)` says whether a rule matches the connection.
fn decide<'p>(
    policies: &'p Policies,
    namespaces: &NamespaceLabels,
    pod: &Pod,
    ingress: bool,
    allows: impl Fn(&str, &Rule) -> bool,
) -> Decision {
    let cluster_tier = |tier| {
        let selecting = policies.cluster_selecting(tier, pod, namespaces);
        cluster_decision(selecting, ingress, tier, &allows)
    };
    if let Some(decided) = cluster_tier(Tier::Admin) {
        return decided;
    }
    let rules_of = |p: &'p Policy| match ingress {
        true => p.ingress.as_deref(),
        false => p.egress.as_deref(),
    };
    match network_decision(&policies.network, pod, rules_of, |p, rule| {
        allows(&p.key.namespace, rule)
    }) {
        Decision::NotIsolated => cluster_tier(Tier::Baseline).unwrap_or(Decision::NotIsolated),
        decided => decided,
    }
}

/// The first Accept or Deny of one tier's policies (in order) whose rule
/// matches; `None` when none does or one Passes.
fn cluster_decision<'p>(
    policies: impl Iterator<Item = &'p ClusterPolicy>,
    ingress: bool,
    tier: Tier,
    allows: impl Fn(&str, &Rule) -> bool,
) -> Option<Decision> {
    for policy in policies {
        let rules = policy.rules(ingress);
        let Some((i, rule)) = rules
            .iter()
            .enumerate()
            .find(|(_, r)| allows("", &r.matches))
        else {
            continue;
        };
        return match rule.action {
            Action::Pass => None,
            action => Some(Decision::Cluster {
                policy: policy.name.clone(),
                tier,
                rule: (i, rule.name.clone()),
                action,
            }),
        };
    }
    None
}

/// The NetworkPolicy tier for `pod`: the policies selecting it that
/// isolate the direction (`rules_of`), and the first of their rules that
/// `allows`.
fn network_decision<'p>(
    policies: &'p [Policy],
    pod: &Pod,
    rules_of: impl Fn(&'p Policy) -> Option<&'p [Rule]>,
    allows: impl Fn(&Policy, &Rule) -> bool,
) -> Decision {
    let mut isolated_by = Vec::new();
    for policy in policies.iter().filter(|p| p.selects(pod)) {
        let Some(rules) = rules_of(policy) else {
            continue;
        };
        if let Some(i) = rules.iter().position(|rule| allows(policy, rule)) {
            return Decision::Allowed {
                policy: policy.key.clone(),
                rule: i,
            };
        }
        isolated_by.push(policy.key.clone());
    }
    if isolated_by.is_empty() {
        Decision::NotIsolated
    } else {
        Decision::Denied { isolated_by }
    }
}

/// Whether `rule`, of a policy in namespace `policy_namespace`, allows
/// `conn` with `peer` on the other side.
fn allows(
    rule: &Rule,
    policy_namespace: &str,
    peer: &Party,
    conn: &Connection,
    namespaces: &NamespaceLabels,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| matches_peer(p, policy_namespace, peer, namespaces));
    let port_ok = rule.ports.is_empty() || rule.ports.iter().any(|p| matches_port(p, conn));
    peer_ok && port_ok
}

fn matches_peer(
    peer: &Peer,
    policy_namespace: &str,
    party: &Party,
    namespaces: &NamespaceLabels,
) -> bool {
    match peer {
        Peer::Pods {
            namespaces: selector,
            pods,
        } => {
            let Some(pod) = party.subject() else {
                return false;
            };
            let in_namespace = match selector {
                None => pod.namespace == policy_namespace,
                Some(selector) => namespaces
                    .get(&pod.namespace)
                    .is_some_and(|labels| weft_validation::labels::matches(selector, labels)),
            };
            in_namespace && weft_validation::labels::matches(pods, &pod.labels)
        }
        Peer::Block { cidr, except } => party
            .ip()
            .is_some_and(|ip| cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))),
        Peer::Nothing => false,
    }
}

fn matches_port(port: &PortMatch, conn: &Connection) -> bool {
    if port.protocol != Some(conn.protocol) {
        return false;
    }
    match &port.port {
        PortSpec::Any => true,
        PortSpec::Range(first, last) => (*first..=*last).contains(&conn.port),
        // Named ports resolve against the destination pod's containers.
        PortSpec::Named(name) => match conn.to {
            Party::Pod(pod) => pod
                .ports
                .iter()
                .any(|p| p.name == *name && p.protocol == conn.protocol && p.port == conn.port),
            _ => false,
        },
        PortSpec::Nothing => false,
    }
}

impl Verdict {
    /// The verdict in words, as `weft lab explain` and the denial log say
    /// it: both directions, which policy and rule allowed, or which
    /// policies isolate and that no rule allows.
    pub fn explain(&self, conn: &Connection) -> String {
        let what = format!(
            "{} → {}:{}/{}",
            conn.from, conn.to, conn.port, conn.protocol
        );
        let egress = direction("egress", &conn.from, &conn.to, &self.egress);
        let ingress = direction("ingress", &conn.to, &conn.from, &self.ingress);
        let word = if self.allowed() { "allowed" } else { "denied" };
        format!("{word} {what}: {egress}; {ingress}")
    }
}

/// One direction of `pod` (its side of the connection) with `peer` on
/// the other.
fn direction(which: &str, pod: &Party, peer: &Party, decision: &Decision) -> String {
    match decision {
        Decision::NotIsolated => match pod.subject() {
            Some(_) => format!("{which} of {pod} is not isolated"),
            None => format!("{which}: {pod} is not subject to policies"),
        },
        Decision::OwnNode => format!("{which} of {pod} allows its own node always"),
        Decision::Allowed { policy, rule } => {
            format!("{which} of {pod} allowed by {policy} rule {which}[{rule}]")
        }
        Decision::Cluster {
            policy,
            tier,
            rule: (i, name),
            action,
        } => {
            let verb = match action {
                Action::Deny => "denied",
                _ => "allowed",
            };
            let name = name
                .as_ref()
                .map(|n| format!(" ({n:?})"))
                .unwrap_or_default();
            format!(
                "{which} of {pod} {verb} by ClusterNetworkPolicy {policy} ({tier} tier) rule {which}[{i}]{name}"
            )
        }
        Decision::Denied { isolated_by } => {
            let names: Vec<String> = isolated_by.iter().map(ToString::to_string).collect();
            format!(
                "{which} of {pod} is isolated by {} and no rule allows {peer}",
                names.join(", ")
            )
        }
    }
}
