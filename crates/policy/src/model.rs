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

use crate::api::{self, ClusterNetworkPolicy};

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

/// A cluster-wide policy's tier: Admin is checked before NetworkPolicy,
/// Baseline after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    Baseline,
}

/// What a cluster-wide rule does with what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Allowed: the rest of this direction is not checked (on egress the
    /// destination's ingress still is).
    Accept,
    Deny,
    /// The rest of the tier is skipped: the next tier decides.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        })
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        })
    }
}

/// One ClusterNetworkPolicy (`policy.networking.k8s.io`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPolicy {
    pub name: String,
    pub tier: Tier,
    pub priority: i32,
    /// The pods it applies to: those `pods` selects in the namespaces
    /// `namespaces` selects; `None` when the subject could not be read
    /// (it then applies to no pod).
    pub subject: Option<(LabelSelector, LabelSelector)>,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
    /// What could not be read, and how it was taken.
    pub problems: Vec<String>,
}

/// One rule of a cluster-wide policy, in its policy's order.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRule {
    pub name: Option<String>,
    pub action: Action,
    /// What it matches, with NetworkPolicy's meaning of the fields.
    pub matches: Rule,
}

impl ClusterPolicy {
    /// Reads `cnp`; an error when its tier is not one weft knows (it is
    /// then enforced in no tier, and the caller reports why).
    ///
    /// A rule with a part that cannot be read *fails closed*, as the API
    /// asks: an Accept rule matches nothing; a Deny or Pass rule denies
    /// everything.
    pub fn read(cnp: &ClusterNetworkPolicy) -> Result<ClusterPolicy, String> {
        let name = cnp.metadata.name.clone().unwrap_or_default();
        let spec = &cnp.spec;
        let tier = match spec.tier.as_str() {
            "Admin" => Tier::Admin,
            "Baseline" => Tier::Baseline,
            other => return Err(format!("spec.tier: {other:?} is not Admin or Baseline")),
        };
        let mut problems = Vec::new();
        let subject = match (&spec.subject.namespaces, &spec.subject.pods) {
            (Some(namespaces), None) => Some((namespaces.clone(), LabelSelector::default())),
            (None, Some(pods)) => {
                Some((pods.namespace_selector.clone(), pods.pod_selector.clone()))
            }
            _ => {
                problems.push(
                    "spec.subject: needs exactly one of namespaces or pods; it applies to no pod"
                        .into(),
                );
                None
            }
        };
        let [ingress, egress] = spec.directions().map(|(direction, _, rules)| {
            let egress = direction == "egress";
            rules
                .into_iter()
                .enumerate()
                .map(|(i, rule)| {
                    let at = format!("spec.{direction}[{i}]");
                    cluster_rule(rule, egress, &at, &mut problems)
                })
                .collect::<Vec<ClusterRule>>()
        });
        Ok(ClusterPolicy {
            name,
            tier,
            priority: spec.priority,
            subject,
            ingress,
            egress,
            problems,
        })
    }

    /// Whether it applies to `pod` (never to hostNetwork pods).
    pub fn selects(&self, pod: &Pod, namespaces: &NamespaceLabels) -> bool {
        let Some((namespace_selector, pod_selector)) = &self.subject else {
            return false;
        };
        !pod.host_network
            && namespaces
                .get(&pod.namespace)
                .is_some_and(|labels| weft_validation::labels::matches(namespace_selector, labels))
            && weft_validation::labels::matches(pod_selector, &pod.labels)
    }

    /// Its rules for one direction.
    pub fn rules(&self, ingress: bool) -> &[ClusterRule] {
        if ingress {
            &self.ingress
        } else {
            &self.egress
        }
    }
}

/// One cluster-wide rule (`networks` peers only on `egress`).
fn cluster_rule(
    api::RuleView {
        name,
        action,
        peers,
        protocols,
    }: api::RuleView,
    egress: bool,
    at: &str,
    problems: &mut Vec<String>,
) -> ClusterRule {
    let action = match action {
        "Accept" => Action::Accept,
        "Pass" => Action::Pass,
        "Deny" => Action::Deny,
        other => {
            problems.push(format!(
                "{at}.action: {other:?} is not Accept, Deny or Pass; taken as Deny"
            ));
            Action::Deny
        }
    };
    // How a rule with an unread part is taken ("fails closed").
    let taken = match action {
        Action::Accept => "the rule matches nothing",
        _ => "the rule denies everything",
    };
    let mut unread = false;
    let mut read_peers = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        match cluster_peer(peer, egress) {
            Ok(mut each) => read_peers.append(&mut each),
            Err(why) => {
                problems.push(format!("{at}: peer {i}: {why}; {taken}"));
                unread = true;
            }
        }
    }
    if read_peers.is_empty() && !unread {
        problems.push(format!("{at}: needs at least one peer; {taken}"));
        unread = true;
    }
    let mut ports = Vec::new();
    let mut unread_port = false;
    for (i, p) in protocols.unwrap_or_default().iter().enumerate() {
        match cluster_port(p) {
            Some(port) => ports.push(port),
            None => {
                problems.push(format!("{at}.protocols[{i}]: needs exactly one of tcp, udp or sctp with a port number or range; {taken}"));
                unread_port = true;
            }
        }
    }
    // Fails closed as the API words it: an Accept rule with a part it
    // cannot read matches nothing; a Deny or Pass rule is a Deny of all.
    let (action, matches) = match (action, unread || unread_port) {
        (_, false) => (
            action,
            Rule {
                peers: read_peers,
                ports,
            },
        ),
        (Action::Accept, true) => (
            action,
            Rule {
                peers: vec![Peer::Nothing],
                ports: Vec::new(),
            },
        ),
        (Action::Deny | Action::Pass, true) => (
            Action::Deny,
            Rule {
                peers: Vec::new(),
                ports: Vec::new(),
            },
        ),
    };
    ClusterRule {
        name: name.map(str::to_owned),
        action,
        matches,
    }
}

/// A cluster-wide peer as NetworkPolicy peers (networks: one block each).
/// A selector the API would not accept is unread: the CRD's schema does
/// not check selectors, and one that matched nothing would let a Deny
/// fail open.
fn cluster_peer(peer: &api::Peer, networks_allowed: bool) -> Result<Vec<Peer>, String> {
    let selectors = [
        peer.namespaces.as_ref(),
        peer.pods.as_ref().map(|p| &p.namespace_selector),
        peer.pods.as_ref().map(|p| &p.pod_selector),
    ];
    for selector in selectors.into_iter().flatten() {
        let mut errors = weft_validation::Errors::default();
        weft_validation::labels::validate_selector(selector, "selector", &mut errors);
        if !errors.is_empty() {
            return Err(format!("an invalid selector ({errors})"));
        }
    }
    match (&peer.namespaces, &peer.pods, &peer.networks) {
        (Some(namespaces), None, None) => Ok(vec![Peer::Pods {
            namespaces: Some(namespaces.clone()),
            pods: LabelSelector::default(),
        }]),
        (None, Some(pods), None) => Ok(vec![Peer::Pods {
            namespaces: Some(pods.namespace_selector.clone()),
            pods: pods.pod_selector.clone(),
        }]),
        (None, None, Some(networks)) if networks_allowed => networks
            .iter()
            .map(|text| match text.trim().parse::<IpNet>() {
                Ok(cidr) => Ok(Peer::Block {
                    cidr,
                    except: Vec::new(),
                }),
                Err(_) => Err(format!("{text:?} is not a CIDR")),
            })
            .collect(),
        _ => Err("needs exactly one of namespaces, pods or (egress) networks".into()),
    }
}

/// One protocol entry; `None` when it is not exactly one protocol with
/// a readable port.
fn cluster_port(p: &api::ProtocolMatch) -> Option<PortMatch> {
    let (protocol, port) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(port), None, None) => (Protocol::Tcp, port),
        (None, Some(port), None) => (Protocol::Udp, port),
        (None, None, Some(port)) => (Protocol::Sctp, port),
        _ => return None,
    };
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n != 0);
    let port = match &port.destination_port {
        None => PortSpec::Any,
        Some(api::Port {
            number: Some(n),
            range: None,
        }) => {
            let n = number(*n)?;
            PortSpec::Range(n, n)
        }
        Some(api::Port {
            number: None,
            range: Some(range),
        }) => {
            let (start, end) = (number(range.start)?, number(range.end)?);
            if start > end {
                return None;
            }
            PortSpec::Range(start, end)
        }
        Some(_) => return None,
    };
    Some(PortMatch {
        protocol: Some(protocol),
        port,
    })
}

/// Every policy that holds on the cluster: the cluster-wide ones in the
/// order they are checked (tier, priority, then name, so that equal
/// priorities are decided the same way every time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policies {
    pub network: Vec<Policy>,
    pub cluster: Vec<ClusterPolicy>,
    /// Cluster-wide policies enforced in no tier, and why.
    pub left_out: Vec<String>,
}

impl Policies {
    pub fn new(network: Vec<Policy>, mut cluster: Vec<ClusterPolicy>) -> Policies {
        cluster.sort_by(|a, b| (a.tier, a.priority, &a.name).cmp(&(b.tier, b.priority, &b.name)));
        Policies {
            network,
            cluster,
            left_out: Vec::new(),
        }
    }

    /// Reads the API's objects.
    pub fn read<'a>(
        network: impl IntoIterator<Item = &'a NetworkPolicy>,
        cluster: impl IntoIterator<Item = &'a ClusterNetworkPolicy>,
    ) -> Policies {
        let mut left_out = Vec::new();
        let cluster = cluster
            .into_iter()
            .filter_map(|cnp| {
                ClusterPolicy::read(cnp)
                    .map_err(|why| {
                        let name = cnp.metadata.name.as_deref().unwrap_or_default();
                        left_out.push(format!(
                            "ClusterNetworkPolicy {name}: {why}; it is not enforced"
                        ));
                    })
                    .ok()
            })
            .collect();
        let network = network.into_iter().map(Policy::read).collect();
        Policies {
            left_out,
            ..Policies::new(network, cluster)
        }
    }

    /// Everything that could not be read, one line each, naming the
    /// policy and what was made of it.
    pub fn problems(&self) -> Vec<String> {
        let network = self.network.iter().flat_map(|p| {
            p.problems.iter().map(move |problem| {
                format!("NetworkPolicy {}: {problem} (it matches nothing)", p.key)
            })
        });
        let cluster = self.cluster.iter().flat_map(|p| {
            p.problems
                .iter()
                .map(move |problem| format!("ClusterNetworkPolicy {}: {problem}", p.name))
        });
        network
            .chain(cluster)
            .chain(self.left_out.iter().cloned())
            .collect()
    }

    /// NetworkPolicies only.
    pub fn network(network: Vec<Policy>) -> Policies {
        Policies::new(network, Vec::new())
    }

    pub fn is_empty(&self) -> bool {
        self.network.is_empty() && self.cluster.is_empty()
    }

    /// The cluster-wide policies of `tier` that apply to `pod`, in order.
    pub fn cluster_selecting<'a>(
        &'a self,
        tier: Tier,
        pod: &'a Pod,
        namespaces: &'a NamespaceLabels,
    ) -> impl Iterator<Item = &'a ClusterPolicy> + 'a {
        self.cluster
            .iter()
            .filter(move |p| p.tier == tier && p.selects(pod, namespaces))
    }
}
