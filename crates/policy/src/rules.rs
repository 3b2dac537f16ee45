//! The nftables rules that enforce the policies on one node (pure): table
//! `ip weft-policy`, written whole, checked on this node's pods only —
//! ingress where the destination runs, egress where the source runs.
//!
//! Where it hooks (measured, see docs/policy-design.md): the ip family's
//! forward hook sees, after Service DNAT, traffic bridged between pods of
//! one node (br_netfilter), routed in from other nodes and NodePort
//! traffic; the input hook sees a pod's traffic to its own node. Traffic
//! the node itself sends (kubelet probes) passes neither, so it is always
//! allowed. Replies pass as established connections; a denied new
//! connection is logged to [`LOG_GROUP`] (rate-limited) and dropped.
//!
//! Every allowed case is one rule built from the same model the verdicts
//! use: its peers as addresses (pods by their current IPs, blocks with
//! their exceptions) and its ports as numbers (named ports resolved on
//! the destination pod).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use weft_datapath::nft::Family;
use weft_datapath::nft_script::{Hook, Script};

use crate::model::{NamespaceLabels, Peer, Pod, Policy, PortMatch, PortSpec, Protocol, Rule};

pub const TABLE: &str = "weft-policy";

/// The nfnetlink_log group denied packets are logged to (the agent reads
/// it and explains each denial).
pub const LOG_GROUP: u16 = 2713;

/// Denials logged per second and chain, at most (a flood of denied
/// packets must not flood the agent).
const LOG_RATE: &str = "limit rate 10/second burst 20 packets";

/// Which side of a connection a chain checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The address field of the pod the chain is for, and of its peers.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Direction::Ingress => ("daddr", "saddr"),
            Direction::Egress => ("saddr", "daddr"),
        }
    }
}

/// The whole table for node `node`: delete and recreate in one
/// transaction (the caller adds `add table` first when the table may be
/// missing, so the delete cannot fail).
pub fn script(
    policies: &[Policy],
    pods: &[Pod],
    namespaces: &NamespaceLabels,
    node: &str,
) -> String {
    let filter = |hook: &'static str| Hook {
        chain_type: "filter",
        hook,
        priority: "filter".into(),
        policy: Some("accept"),
    };
    let accepted = "ct state established,related accept".to_string();
    let mut chains: Vec<(String, Option<Hook>, Vec<String>)> = vec![
        (
            "forward".into(),
            Some(filter("forward")),
            vec![
                accepted.clone(),
                "jump egress".into(),
                "jump ingress".into(),
            ],
        ),
        (
            "input".into(),
            Some(filter("input")),
            vec![accepted, "jump egress".into()],
        ),
    ];
    let mut dispatch = [("ingress", Vec::new()), ("egress", Vec::new())];
    let local = pods
        .iter()
        .filter(|p| !p.host_network && p.node.as_deref() == Some(node))
        .filter_map(|p| Some((p, p.ip?)));
    for (i, (pod, ip)) in local.enumerate() {
        for (direction, (name, jumps)) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .zip(dispatch.iter_mut())
        {
            let Some(rules) = rules_for(policies, pod, direction) else {
                continue;
            };
            let chain = format!("{name}-{i}");
            let (own, _) = direction.fields();
            jumps.push(format!("ip {own} {ip} jump {chain}"));
            // Egress that is allowed goes on to the destination's ingress.
            let verdict = match direction {
                Direction::Ingress => "accept",
                Direction::Egress => "return",
            };
            let mut body: Vec<String> = rules
                .into_iter()
                .flat_map(|(policy_ns, rule)| {
                    allow(rule, policy_ns, pod, direction, pods, namespaces)
                })
                .map(|expr| format!("{expr}{verdict}"))
                .collect();
            body.push(format!(
                "{LOG_RATE} log prefix \"{name}\" group {LOG_GROUP}"
            ));
            body.push("counter drop".into());
            chains.push((chain, None, body));
        }
    }
    for (name, jumps) in dispatch {
        chains.push((name.into(), None, jumps));
    }
    let mut s = Script::new(Family::Ip, TABLE);
    s.add_table().delete_table().add_table();
    // Every chain before any rule: rules jump to chains made later.
    for (name, hook, _) in &chains {
        s.add_chain(name, hook.as_ref());
    }
    for (name, _, rules) in &chains {
        for rule in rules {
            s.add_rule(name, rule);
        }
    }
    s.into_string()
}

/// The rules (with their policy's namespace) that apply to `pod` in
/// `direction`; `None` when no policy isolates it there.
fn rules_for<'p>(
    policies: &'p [Policy],
    pod: &Pod,
    direction: Direction,
) -> Option<Vec<(&'p str, &'p Rule)>> {
    let mut isolated = false;
    let mut out = Vec::new();
    for policy in policies.iter().filter(|p| p.selects(pod)) {
        let rules = match direction {
            Direction::Ingress => policy.ingress.as_deref(),
            Direction::Egress => policy.egress.as_deref(),
        };
        if let Some(rules) = rules {
            isolated = true;
            out.extend(rules.iter().map(|r| (policy.key.namespace.as_str(), r)));
        }
    }
    isolated.then_some(out)
}

/// The match expressions (each ending in a space, ready for a verdict)
/// that together allow what `rule` allows for `pod` in `direction`.
fn allow(
    rule: &Rule,
    policy_ns: &str,
    pod: &Pod,
    direction: Direction,
    pods: &[Pod],
    namespaces: &NamespaceLabels,
) -> Vec<String> {
    let (_, peer_field) = direction.fields();
    // Each peer as (match text, the pods it stands for when it is pods).
    let peers: Vec<(String, Option<Vec<&Pod>>)> = if rule.peers.is_empty() {
        vec![(String::new(), None)]
    } else {
        rule.peers
            .iter()
            .filter_map(|peer| peer_match(peer, policy_ns, peer_field, pods, namespaces))
            .collect()
    };
    let ports: Vec<&PortMatch> = rule.ports.iter().collect();
    let mut out = Vec::new();
    for (peer_text, peer_pods) in &peers {
        if ports.is_empty() {
            out.push(peer_text.clone());
            continue;
        }
        for port in &ports {
            let Some(protocol) = port.protocol else {
                continue;
            };
            let l4 = format!("meta l4proto {} ", protocol.nft());
            match &port.port {
                PortSpec::Any => out.push(format!("{peer_text}{l4}")),
                PortSpec::Range(a, b) if a == b => {
                    out.push(format!("{peer_text}{l4}th dport {a} "))
                }
                PortSpec::Range(a, b) => out.push(format!("{peer_text}{l4}th dport {a}-{b} ")),
                PortSpec::Named(name) => out.extend(named(
                    name,
                    protocol,
                    peer_text,
                    peer_pods.as_deref(),
                    pod,
                    direction,
                    pods,
                )),
                PortSpec::Nothing => {}
            }
        }
    }
    out
}

/// A named port: on ingress, the pod's own port of that name; on egress,
/// each destination pod's (the peer's pods, or every pod when the rule
/// names no peer), as address and port pairs.
fn named(
    name: &str,
    protocol: Protocol,
    peer_text: &str,
    peer_pods: Option<&[&Pod]>,
    pod: &Pod,
    direction: Direction,
    pods: &[Pod],
) -> Vec<String> {
    let port_of = |p: &Pod| {
        p.ports
            .iter()
            .find(|n| n.name == name && n.protocol == protocol)
            .map(|n| n.port)
    };
    let l4 = format!("meta l4proto {} ", protocol.nft());
    match direction {
        Direction::Ingress => port_of(pod)
            .map(|port| format!("{peer_text}{l4}th dport {port} "))
            .into_iter()
            .collect(),
        Direction::Egress => {
            // A block of addresses has no named ports.
            if peer_pods.is_none() && !peer_text.is_empty() {
                return Vec::new();
            }
            let candidates: Vec<&Pod> = match peer_pods {
                Some(list) => list.to_vec(),
                None => pods.iter().filter(|p| !p.host_network).collect(),
            };
            let pairs: BTreeSet<String> = candidates
                .iter()
                .filter_map(|p| Some(format!("{} . {}", p.ip?, port_of(p)?)))
                .collect();
            if pairs.is_empty() {
                return Vec::new();
            }
            let list: Vec<String> = pairs.into_iter().collect();
            vec![format!(
                "{l4}ip daddr . th dport {{ {} }} ",
                list.join(", ")
            )]
        }
    }
}

/// One peer as a match on the other side's address (`field`), and the
/// pods it stands for; `None` when it matches nothing now.
fn peer_match<'a>(
    peer: &Peer,
    policy_ns: &str,
    field: &str,
    pods: &'a [Pod],
    namespaces: &NamespaceLabels,
) -> Option<(String, Option<Vec<&'a Pod>>)> {
    match peer {
        Peer::Pods {
            namespaces: selector,
            pods: pod_selector,
        } => {
            let chosen: Vec<&Pod> = pods
                .iter()
                .filter(|p| !p.host_network && p.ip.is_some())
                .filter(|p| match selector {
                    None => p.namespace == policy_ns,
                    Some(selector) => namespaces
                        .get(&p.namespace)
                        .is_some_and(|labels| weft_validation::labels::matches(selector, labels)),
                })
                .filter(|p| weft_validation::labels::matches(pod_selector, &p.labels))
                .collect();
            if chosen.is_empty() {
                return None;
            }
            let ips: BTreeSet<String> = chosen
                .iter()
                .filter_map(|p| p.ip)
                .map(|ip| ip.to_string())
                .collect();
            let list: Vec<String> = ips.into_iter().collect();
            Some((
                format!("ip {field} {{ {} }} ", list.join(", ")),
                Some(chosen),
            ))
        }
        Peer::Block { cidr, except } => {
            let cidr = match cidr {
                ipnet::IpNet::V4(v4) => v4,
                // The table is IPv4: an IPv6 block admits nothing here.
                ipnet::IpNet::V6(_) => return None,
            };
            let mut text = format!("ip {field} {cidr} ");
            let v4: Vec<String> = except
                .iter()
                .filter(|e| e.addr().is_ipv4())
                .map(|e| e.to_string())
                .collect();
            if !v4.is_empty() {
                let _ = write!(text, "ip {field} != {{ {} }} ", v4.join(", "));
            }
            Some((text, None))
        }
        Peer::Nothing => None,
    }
}
