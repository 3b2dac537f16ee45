//! Whether one connection is allowed: the source's egress and the
//! destination's ingress are decided apart, and both must allow it. A pod
//! no policy selects for a direction is not isolated in it; a pod that
//! some policy isolates accepts only what a rule of any policy selecting
//! it allows (policies add up). Traffic from the destination's own node
//! is always allowed (kubelet probes). Replies are not connections: the
//! datapath lets them through by connection tracking.

use std::fmt;
use std::net::IpAddr;

use crate::model::{
    NamespaceLabels, Peer, Pod, Policy, PolicyKey, PortMatch, PortSpec, Protocol, Rule,
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
}

impl Decision {
    pub fn allows(&self) -> bool {
        !matches!(self, Decision::Denied { .. })
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
pub fn verdict(policies: &[Policy], namespaces: &NamespaceLabels, conn: &Connection) -> Verdict {
    let egress = match conn.from.subject() {
        Some(pod) => decide(
            policies,
            pod,
            |p| p.egress.as_deref(),
            |policy, rule| allows(rule, &policy.key.namespace, &conn.to, conn, namespaces),
        ),
        None => Decision::NotIsolated,
    };
    let ingress = match (conn.to.subject(), conn.from) {
        (Some(_), Party::OwnNode) => Decision::OwnNode,
        (Some(pod), _) => decide(
            policies,
            pod,
            |p| p.ingress.as_deref(),
            |policy, rule| allows(rule, &policy.key.namespace, &conn.from, conn, namespaces),
        ),
        (None, _) => Decision::NotIsolated,
    };
    Verdict { egress, ingress }
}

/// One direction of `pod`: the policies selecting it that isolate the
/// direction (`rules_of`), and the first of their rules that `allows`.
fn decide<'p>(
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
        Decision::Denied { isolated_by } => {
            let names: Vec<String> = isolated_by.iter().map(ToString::to_string).collect();
            format!(
                "{which} of {pod} is isolated by {} and no rule allows {peer}",
                names.join(", ")
            )
        }
    }
}
