//! Policies, pods and namespaces as the verdicts need them. A policy is
//! read once from its API object, with the API server's defaulting of
//! `policyTypes`: Ingress always, Egress when the policy has egress rules.
//!
//! Reading never fails: a part that cannot be read (an unknown protocol, a
//! bad CIDR) matches nothing, so it can only allow less, and is listed in
//! [`Policy::problems`] to be reported. A policy that isolates a direction
//! keeps isolating it however broken its rules are.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod as ApiPod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
pub use weft_validation::protocol::Protocol;

/// Labels of one object.
pub type Labels = BTreeMap<String, String>;

/// Each namespace's labels, by name.
pub type NamespaceLabels = BTreeMap<String, Labels>;

/// A policy's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One NetworkPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub key: PolicyKey,
    /// The pods of its namespace it applies to.
    pub pod_selector: LabelSelector,
    /// The ingress rules, or `None` when it does not isolate ingress.
    pub ingress: Option<Vec<Rule>>,
    /// The egress rules, or `None` when it does not isolate egress.
    pub egress: Option<Vec<Rule>>,
    /// What could not be read (each such part matches nothing).
    pub problems: Vec<String>,
}

/// One ingress or egress rule: traffic with any of its peers on any of
/// its ports.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Empty: every peer.
    pub peers: Vec<Peer>,
    /// Empty: every port of every protocol.
    pub ports: Vec<PortMatch>,
}

/// The other side of a connection, as a rule names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// Pods matching `pods` in the namespaces `namespaces` selects
    /// (`None`: the policy's own namespace).
    Pods {
        namespaces: Option<LabelSelector>,
        pods: LabelSelector,
    },
    /// Addresses in `cidr` but none of `except`.
    Block { cidr: IpNet, except: Vec<IpNet> },
    /// A peer that could not be read: matches nothing.
    Nothing,
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMatch {
    /// `None`: a protocol that could not be read (matches nothing).
    pub protocol: Option<Protocol>,
    pub port: PortSpec,
}

/// Which ports of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    Any,
    /// From the first to the second, both included (`port`, `endPort`).
    Range(u16, u16),
    /// A container port name of the destination pod.
    Named(String),
    /// A port that could not be read: matches nothing.
    Nothing,
}

/// A container port a pod declares (what named ports resolve against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as policies see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: Option<IpAddr>,
    /// Its containers' named ports.
    pub ports: Vec<NamedPort>,
    /// hostNetwork pods are not subject to policies and are seen by them
    /// as their node's address.
    pub host_network: bool,
    /// The node it runs on (`spec.nodeName`), once scheduled.
    pub node: Option<String>,
}

/// Whether `pod` has finished (Succeeded or Failed): it keeps its
/// `status.podIP`, which a new pod may hold by now, so it stands for no
/// address.
pub fn is_finished(pod: &ApiPod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

impl Pod {
    /// Reads the API's Pod: its address from `status.podIP`, its named
    /// container ports (unnamed ones cannot be referred to by name).
    pub fn read(pod: &ApiPod) -> Pod {
        let spec = pod.spec.clone().unwrap_or_default();
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    port: u16::try_from(p.container_port).ok()?,
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                })
            })
            .collect();
        Pod {
            namespace: pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            ports,
            host_network: spec.host_network.unwrap_or(false),
            node: spec.node_name.clone(),
        }
    }
}

/// Each namespace's labels; a namespace is labelled with its name
/// (`kubernetes.io/metadata.name`) as the API server labels it, also when
/// the object does not say so, and the namespaces every cluster has are
/// there even when no object is stored for them (the embedded store).
pub fn namespace_labels<'a>(
    namespaces: impl IntoIterator<Item = &'a Namespace>,
) -> NamespaceLabels {
    let mut out: NamespaceLabels = BUILT_IN_NAMESPACES
        .iter()
        .map(|name| (name.to_string(), Labels::new()))
        .collect();
    for ns in namespaces {
        if let Some(name) = &ns.metadata.name {
            out.insert(name.clone(), ns.metadata.labels.clone().unwrap_or_default());
        }
    }
    for (name, labels) in &mut out {
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    }
    out
}

/// The namespaces every cluster has from the start.
pub const BUILT_IN_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The label the API server gives every namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl fmt::Display for Pod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Policy {
    /// Reads `np` (its namespace defaults to "default").
    pub fn read(np: &NetworkPolicy) -> Policy {
        let key = PolicyKey {
            namespace: np
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: np.metadata.name.clone().unwrap_or_default(),
        };
        let spec = np.spec.clone().unwrap_or_default();
        let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        let types: Vec<String> = match spec.policy_types {
            Some(types) if !types.is_empty() => types,
            _ if has_egress_rules => vec!["Ingress".into(), "Egress".into()],
            _ => vec!["Ingress".into()],
        };
        let mut problems = Vec::new();
        let ingress = types.iter().any(|t| t == "Ingress").then(|| {
            spec.ingress
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| {
                    let at = format!("spec.ingress[{i}]");
                    let from = (r.from.as_deref(), "from");
                    rule(from, r.ports.as_deref(), &at, &mut problems)
                })
                .collect()
        });
        let egress = types.iter().any(|t| t == "Egress").then(|| {
            spec.egress
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| {
                    let at = format!("spec.egress[{i}]");
                    let to = (r.to.as_deref(), "to");
                    rule(to, r.ports.as_deref(), &at, &mut problems)
                })
                .collect()
        });
        Policy {
            key,
            pod_selector: spec.pod_selector.unwrap_or_default(),
            ingress,
            egress,
            problems,
        }
    }

    /// Whether it applies to `pod`.
    pub fn selects(&self, pod: &Pod) -> bool {
        !pod.host_network
            && pod.namespace == self.key.namespace
            && weft_validation::labels::matches(&self.pod_selector, &pod.labels)
    }
}

/// A rule from its peers (and their field, `from` or `to`) and ports.
fn rule(
    (peers, field): (Option<&[NetworkPolicyPeer]>, &str),
    ports: Option<&[NetworkPolicyPort]>,
    at: &str,
    problems: &mut Vec<String>,
) -> Rule {
    Rule {
        peers: peers
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| peer(p, &format!("{at}.{field}[{i}]"), problems))
            .collect(),
        ports: ports
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| port(p, &format!("{at}.ports[{i}]"), problems))
            .collect(),
    }
}

fn peer(p: &NetworkPolicyPeer, at: &str, problems: &mut Vec<String>) -> Peer {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (Some(block), None, None) => ip_block(block, at, problems),
        (None, None, None) => {
            problems.push(format!(
                "{at}: a peer needs a podSelector, namespaceSelector or ipBlock"
            ));
            Peer::Nothing
        }
        (None, namespaces, pods) => Peer::Pods {
            namespaces: namespaces.clone(),
            pods: pods.clone().unwrap_or_default(),
        },
        (Some(_), _, _) => {
            problems.push(format!("{at}: ipBlock cannot be combined with selectors"));
            Peer::Nothing
        }
    }
}

fn ip_block(block: &IPBlock, at: &str, problems: &mut Vec<String>) -> Peer {
    let parse = |text: &str, field: &str, problems: &mut Vec<String>| {
        text.trim().parse::<IpNet>().map_err(|_| {
            problems.push(format!("{at}.ipBlock.{field}: {text:?} is not a CIDR"));
        })
    };
    let Ok(cidr) = parse(&block.cidr, "cidr", problems) else {
        return Peer::Nothing;
    };
    let mut except = Vec::new();
    for text in block.except.iter().flatten() {
        match parse(text, "except", problems) {
            Ok(net) => except.push(net),
            // An exception that cannot be read must not widen the block.
            Err(()) => return Peer::Nothing,
        }
    }
    Peer::Block { cidr, except }
}

fn port(p: &NetworkPolicyPort, at: &str, problems: &mut Vec<String>) -> PortMatch {
    let protocol = Protocol::parse(p.protocol.as_deref());
    if protocol.is_none() {
        problems.push(format!(
            "{at}.protocol: {:?} is not TCP, UDP or SCTP",
            p.protocol
        ));
    }
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n != 0);
    let spec = match (&p.port, p.end_port) {
        (None, None) => PortSpec::Any,
        (Some(IntOrString::Int(n)), end) => match (number(*n), end.map(number)) {
            (Some(first), None) => PortSpec::Range(first, first),
            (Some(first), Some(Some(last))) if last >= first => PortSpec::Range(first, last),
            _ => {
                problems.push(format!(
                    "{at}: port {n} (endPort {end:?}) is not a port range"
                ));
                PortSpec::Nothing
            }
        },
        (Some(IntOrString::String(name)), None) => PortSpec::Named(name.clone()),
        (_, Some(end)) => {
            problems.push(format!("{at}.endPort: {end} needs a numeric port"));
            PortSpec::Nothing
        }
    };
    PortMatch {
        protocol,
        port: spec,
    }
}
