//! The nftables rules that enforce the policies on one node (pure): table
//! `ip weft-policy`, checked on this node's pods only — ingress where the
//! destination runs, egress where the source runs.
//!
//! Where it hooks (measured, see docs/policy-design.md): the ip family's
//! forward hook sees, after Service DNAT, traffic bridged between pods of
//! one node (br_netfilter), routed in from other nodes and NodePort
//! traffic; the input hook sees a pod's traffic to its own node. Traffic
//! the node itself sends (kubelet probes) passes neither, so it is always
//! allowed. Replies pass as established connections; a denied new
//! connection is logged to [`LOG_GROUP`] (through one rate limit for the
//! node) and dropped.
//!
//! The table comes in two parts ([`Table`]). Its *structure* — chains,
//! rules, set declarations — depends on the policies and on which
//! policies select this node's pods, not on pod addresses. Its
//! *elements* are addresses:
//! - every peer selector of a policy is one set (`peer-N`) of the
//!   addresses of the pods it selects, shared by every rule naming it;
//! - egress to a named port is a set (`named-N`) of address and port
//!   pairs of the pods that have it;
//! - local pods with the same rules share one chain per direction
//!   (`ingress-N`, `egress-N`), reached through a set of their addresses
//!   (`ingress-N-pods`).
//!
//! So a pod appearing, going or moving between selectors changes
//! elements only, which the agent writes without touching a chain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use weft_datapath::nft::Family;
use weft_datapath::nft_script::{Hook, Script, SetKind};

use crate::model::{
    Action, NamespaceLabels, Peer, Pod, Policies, Policy, PortMatch, PortSpec, Protocol, Rule, Tier,
};

pub const TABLE: &str = "weft-policy";

/// The nfnetlink_log group denied packets are logged to (the agent reads
/// it and explains each denial).
pub const LOG_GROUP: u16 = 2713;

/// The token bucket every chain's denials are logged through: at most
/// this many a second on the whole node, so a flood of denied packets
/// (a port scan over many pods) cannot flood the agent.
const LOG_LIMIT: &str = "denials";
const LOG_RATE: &str = "rate 20/second burst 40 packets ;";

/// One element of a named set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    Addr(Ipv4Addr),
    AddrPort(Ipv4Addr, u16),
}

impl Element {
    fn nft(&self) -> String {
        match self {
            Element::Addr(ip) => ip.to_string(),
            Element::AddrPort(ip, port) => format!("{ip} . {port}"),
        }
    }
}

/// The table for one node: what only a whole rewrite changes, and the
/// sets' elements, which can change alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Everything but elements, as an `nft -f` script that replaces the
    /// table (`add table`, `delete table`, then the new one).
    pub structure: String,
    /// Every set's elements, by set name.
    pub elements: BTreeMap<String, BTreeSet<Element>>,
}

impl Table {
    /// The whole table in one transaction: the structure, then every
    /// element.
    pub fn script(&self) -> String {
        let mut s = Script::new(Family::Ip, TABLE);
        for (set, elements) in self.elements.iter().filter(|(_, e)| !e.is_empty()) {
            let list: Vec<String> = elements.iter().map(Element::nft).collect();
            s.add_elements(set, &list.join(", "));
        }
        format!("{}{}", self.structure, s.into_string())
    }
}

/// Which side of a connection a chain checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// The chain that logs and drops what a cluster-wide rule denies.
    fn denied_chain(self) -> String {
        format!("{}-denied", self.name())
    }

    /// The address field of the pod the chain is for, and of its peers.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Direction::Ingress => ("daddr", "saddr"),
            Direction::Egress => ("saddr", "daddr"),
        }
    }
}

/// What one direction checks for one local pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Checks {
    /// The Admin tier's lines: a match and its verdict, `None` for Pass
    /// (to the other tiers, which then need a chain of their own).
    admin: Vec<(String, Option<String>)>,
    /// NetworkPolicy's lines (ending in the denial tail) when it isolates
    /// the pod, else the Baseline tier's; falling off the end allows.
    rest: Vec<String>,
}

/// The table for node `node`.
pub fn table(policies: &Policies, pods: &[Pod], namespaces: &NamespaceLabels, node: &str) -> Table {
    let mut sets = Sets::new(pods, namespaces);
    // Local pods by what each direction checks for them.
    let mut checked: BTreeMap<(Direction, Checks), BTreeSet<Element>> = BTreeMap::new();
    let local = pods
        .iter()
        .filter(|p| !p.host_network && p.node.as_deref() == Some(node))
        .filter_map(|p| Some((p, v4(p.ip?)?)));
    for (pod, ip) in local {
        for direction in [Direction::Ingress, Direction::Egress] {
            if let Some(checks) = checks(policies, pod, namespaces, direction, &mut sets) {
                checked
                    .entry((direction, checks))
                    .or_default()
                    .insert(Element::Addr(ip));
            }
        }
    }
    let denying: BTreeSet<Direction> = checked
        .keys()
        .filter(|(d, checks)| {
            let target = d.denied_chain();
            let admin = checks.admin.iter().filter_map(|(_, v)| v.as_ref());
            admin.chain(&checks.rest).any(|l| l.ends_with(&target))
        })
        .map(|(d, _)| *d)
        .collect();
    // Where a Pass goes: the other tiers' lines as a chain of their own.
    let passed_to: BTreeMap<(Direction, Vec<String>), String> = checked
        .keys()
        .filter(|(_, checks)| checks.admin.iter().any(|(_, v)| v.is_none()))
        .map(|(d, checks)| (*d, checks.rest.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, (d, rest))| {
            let name = format!("{}-passed-{i}", d.name());
            ((d, rest), name)
        })
        .collect();

    let filter = |hook: &'static str| Hook {
        chain_type: "filter",
        hook,
        priority: "filter".into(),
        policy: Some("accept"),
    };
    let accepted = "ct state established,related accept";
    let mut script = Script::new(Family::Ip, TABLE);
    script.add_table().delete_table().add_table();
    script.add_limit(LOG_LIMIT, LOG_RATE);
    let mut elements = sets.elements;
    for (name, declaration) in &sets.declarations {
        script.add_set(SetKind::Set, name, declaration);
    }
    let mut numbered: BTreeMap<Direction, usize> = BTreeMap::new();
    let mut named_chains = Vec::new();
    for ((direction, checks), members) in checked {
        let n = numbered.entry(direction).or_default();
        let chain = format!("{}-{n}", direction.name());
        *n += 1;
        let members_set = format!("{chain}-pods");
        script.add_set(SetKind::Set, &members_set, "type ipv4_addr ;");
        elements.insert(members_set.clone(), members);
        let body = match passed_to.get(&(direction, checks.rest.clone())) {
            Some(passed) => {
                let then = |v: &Option<String>| v.clone().unwrap_or(format!("goto {passed}"));
                let mut body: Vec<String> = checks
                    .admin
                    .iter()
                    .map(|(m, v)| format!("{m}{}", then(v)))
                    .collect();
                body.push(format!("goto {passed}"));
                body
            }
            None => {
                let admin = checks
                    .admin
                    .iter()
                    .map(|(m, v)| format!("{m}{}", v.as_deref().unwrap_or_default()));
                admin.chain(checks.rest).collect()
            }
        };
        named_chains.push((direction, chain, members_set, body));
    }
    // Every chain before any rule: rules jump to chains made later.
    script.add_chain("forward", Some(&filter("forward")));
    script.add_chain("input", Some(&filter("input")));
    script.add_chain("ingress", None).add_chain("egress", None);
    for direction in &denying {
        script.add_chain(&direction.denied_chain(), None);
    }
    for chain in passed_to.values() {
        script.add_chain(chain, None);
    }
    for (_, chain, _, _) in &named_chains {
        script.add_chain(chain, None);
    }
    script
        .add_rule("forward", accepted)
        .add_rule("forward", "jump egress")
        .add_rule("forward", "jump ingress")
        .add_rule("input", accepted)
        .add_rule("input", "jump egress");
    for direction in &denying {
        for rule in denial_tail(*direction) {
            script.add_rule(&direction.denied_chain(), &rule);
        }
    }
    for ((_, rest), chain) in &passed_to {
        for rule in rest {
            script.add_rule(chain, rule);
        }
    }
    for (direction, chain, members_set, body) in &named_chains {
        let (own, _) = direction.fields();
        script.add_rule(
            direction.name(),
            &format!("ip {own} @{members_set} jump {chain}"),
        );
        for rule in body {
            script.add_rule(chain, rule);
        }
    }
    Table {
        structure: script.into_string(),
        elements,
    }
}

/// The rules that log (rate-limited) and drop a denied new connection.
fn denial_tail(direction: Direction) -> [String; 2] {
    [
        format!(
            "limit name \"{LOG_LIMIT}\" log prefix \"{}\" group {LOG_GROUP}",
            direction.name()
        ),
        "counter drop".into(),
    ]
}

/// What `direction` checks for local `pod`, tier by tier; `None` when no
/// policy of any tier applies to it there.
fn checks<'a>(
    policies: &Policies,
    pod: &Pod,
    namespaces: &NamespaceLabels,
    direction: Direction,
    sets: &mut Sets<'a>,
) -> Option<Checks> {
    // Allowed egress goes on to the destination's ingress.
    let allow = match direction {
        Direction::Ingress => "accept",
        Direction::Egress => "return",
    };
    let cluster_lines = |tier: Tier, sets: &mut Sets<'a>| -> Vec<(String, Action)> {
        policies
            .cluster_selecting(tier, pod, namespaces)
            .flat_map(|p| p.rules(direction == Direction::Ingress))
            .flat_map(|rule| {
                let matches = sets.allow(&rule.matches, "", pod, direction);
                matches.into_iter().map(|m| (m, rule.action))
            })
            .collect()
    };
    let admin = cluster_lines(Tier::Admin, sets);
    let baseline = cluster_lines(Tier::Baseline, sets);
    let network = rules_for(&policies.network, pod, direction);
    if admin.is_empty() && baseline.is_empty() && network.is_none() {
        return None;
    }
    let denied = format!("goto {}", direction.denied_chain());
    let rest = match network {
        Some(rules) => {
            let mut lines: Vec<String> = rules
                .into_iter()
                .flat_map(|(policy_ns, rule)| sets.allow(rule, policy_ns, pod, direction))
                .map(|m| format!("{m}{allow}"))
                .collect();
            lines.extend(denial_tail(direction));
            lines
        }
        None => baseline
            .into_iter()
            .map(|(m, action)| match action {
                Action::Deny => format!("{m}{denied}"),
                // Pass from the last tier: nothing else decides.
                Action::Accept | Action::Pass => format!("{m}{allow}"),
            })
            .collect(),
    };
    let admin = admin
        .into_iter()
        .map(|(m, action)| {
            let then = match action {
                Action::Accept => Some(allow.to_string()),
                Action::Deny => Some(denied.clone()),
                Action::Pass => None,
            };
            (m, then)
        })
        .collect();
    Some(Checks { admin, rest })
}

/// The whole table for node `node` as one script (see [`table`]).
pub fn script(
    policies: &Policies,
    pods: &[Pod],
    namespaces: &NamespaceLabels,
    node: &str,
) -> String {
    table(policies, pods, namespaces, node).script()
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
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

/// The named sets the rules refer to, made as they are first named: one
/// per distinct peer selector (with the namespace it is read in) and per
/// distinct egress named port.
struct Sets<'a> {
    pods: &'a [Pod],
    /// The pods (not hostNetwork) of each namespace.
    by_namespace: BTreeMap<&'a str, Vec<&'a Pod>>,
    namespaces: &'a NamespaceLabels,
    /// Set name by what it stands for.
    names: BTreeMap<String, String>,
    declarations: BTreeMap<String, &'static str>,
    elements: BTreeMap<String, BTreeSet<Element>>,
    /// The pods each peer selector (by identity) selects.
    selections: BTreeMap<String, Rc<Vec<&'a Pod>>>,
}

impl<'a> Sets<'a> {
    fn new(pods: &'a [Pod], namespaces: &'a NamespaceLabels) -> Self {
        let mut by_namespace: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for pod in pods.iter().filter(|p| !p.host_network) {
            by_namespace.entry(&pod.namespace).or_default().push(pod);
        }
        Sets {
            pods,
            by_namespace,
            namespaces,
            names: BTreeMap::new(),
            declarations: BTreeMap::new(),
            elements: BTreeMap::new(),
            selections: BTreeMap::new(),
        }
    }

    /// The set standing for `identity` (`prefix-N`), made with `fill`'s
    /// elements the first time.
    fn named(
        &mut self,
        prefix: &str,
        identity: String,
        declaration: &'static str,
        fill: impl FnOnce() -> BTreeSet<Element>,
    ) -> String {
        if let Some(name) = self.names.get(&identity) {
            return name.clone();
        }
        let count = self
            .declarations
            .keys()
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .count();
        let name = format!("{prefix}-{count}");
        self.names.insert(identity, name.clone());
        self.declarations.insert(name.clone(), declaration);
        self.elements.insert(name.clone(), fill());
        name
    }

    /// The pods `peer` (of a policy in `policy_ns`) selects now: by
    /// namespace first, so a peer costs its namespaces' pods, not all.
    fn selected(
        &self,
        policy_ns: &str,
        selector: Option<&LabelSelector>,
        pods: &LabelSelector,
    ) -> Vec<&'a Pod> {
        let in_namespace = |ns: &str| {
            self.by_namespace
                .get(ns)
                .into_iter()
                .flatten()
                .filter(|p| weft_validation::labels::matches(pods, &p.labels))
                .copied()
                .collect::<Vec<&'a Pod>>()
        };
        match selector {
            None => in_namespace(policy_ns),
            Some(selector) => self
                .namespaces
                .iter()
                .filter(|(_, labels)| weft_validation::labels::matches(selector, labels))
                .flat_map(|(ns, _)| in_namespace(ns))
                .collect(),
        }
    }

    /// The match expressions (each ending in a space, ready for a verdict)
    /// that together allow what `rule` allows for `pod` in `direction`.
    fn allow(
        &mut self,
        rule: &Rule,
        policy_ns: &str,
        pod: &Pod,
        direction: Direction,
    ) -> Vec<String> {
        let (_, peer_field) = direction.fields();
        // Egress to named ports matches address and port pairs, not the
        // peer's addresses: a rule with only those needs no peer set.
        let pairs_only = direction == Direction::Egress
            && !rule.ports.is_empty()
            && rule
                .ports
                .iter()
                .all(|p| matches!(p.port, PortSpec::Named(_)));
        // Each peer as (match text, the identity of its pods when it is pods).
        let peers: Vec<(String, PeerPods<'a>)> = if rule.peers.is_empty() {
            vec![(String::new(), PeerPods::Any)]
        } else {
            rule.peers
                .iter()
                .filter_map(|peer| self.peer_match(peer, policy_ns, peer_field, !pairs_only))
                .collect()
        };
        let mut out = Vec::new();
        for (peer_text, peer_pods) in &peers {
            if rule.ports.is_empty() {
                out.push(peer_text.clone());
                continue;
            }
            for port in &rule.ports {
                out.extend(self.port_match(port, peer_text, peer_pods, pod, direction));
            }
        }
        out
    }

    fn port_match(
        &mut self,
        port: &PortMatch,
        peer_text: &str,
        peer_pods: &PeerPods<'a>,
        pod: &Pod,
        direction: Direction,
    ) -> Option<String> {
        let protocol = port.protocol?;
        let l4 = format!("meta l4proto {} ", protocol.nft());
        match &port.port {
            PortSpec::Any => Some(format!("{peer_text}{l4}")),
            PortSpec::Range(a, b) if a == b => Some(format!("{peer_text}{l4}th dport {a} ")),
            PortSpec::Range(a, b) => Some(format!("{peer_text}{l4}th dport {a}-{b} ")),
            PortSpec::Named(name) => match direction {
                // On ingress, the pod's own port of that name.
                Direction::Ingress => port_named(pod, name, protocol)
                    .map(|number| format!("{peer_text}{l4}th dport {number} ")),
                // On egress, each destination pod's, as address and port
                // pairs: the peer's pods, or every pod when the rule names
                // no peer (a block of addresses has no named ports).
                Direction::Egress => {
                    let set = self.named_ports(peer_pods, name, protocol)?;
                    Some(format!("{l4}ip daddr . th dport @{set} "))
                }
            },
            PortSpec::Nothing => None,
        }
    }

    /// The set of (address, port) pairs of the pods behind `peer_pods`
    /// that have port `name`.
    fn named_ports(
        &mut self,
        peer_pods: &PeerPods<'a>,
        name: &str,
        protocol: Protocol,
    ) -> Option<String> {
        let candidates: Vec<&'a Pod> = match peer_pods {
            PeerPods::Block => return None,
            PeerPods::Any => self.pods.iter().filter(|p| !p.host_network).collect(),
            PeerPods::Selected { pods, .. } => pods.to_vec(),
        };
        let identity = match peer_pods {
            PeerPods::Selected { identity, .. } => format!("{identity} port {name}/{protocol:?}"),
            _ => format!("any port {name}/{protocol:?}"),
        };
        Some(
            self.named("named", identity, "type ipv4_addr . inet_service ;", || {
                candidates
                    .iter()
                    .filter_map(|p| {
                        Some(Element::AddrPort(
                            v4(p.ip?)?,
                            port_named(p, name, protocol)?,
                        ))
                    })
                    .collect()
            }),
        )
    }

    /// One peer as a match on the other side's address (`field`; its set
    /// is made only when `with_set`), and the pods it stands for; `None`
    /// when it can match nothing.
    fn peer_match(
        &mut self,
        peer: &Peer,
        policy_ns: &str,
        field: &str,
        with_set: bool,
    ) -> Option<(String, PeerPods<'a>)> {
        match peer {
            Peer::Pods {
                namespaces: selector,
                pods: pod_selector,
            } => {
                // The namespace matters only when the selector is the
                // policy's own namespace.
                let identity = match selector {
                    None => format!("in {policy_ns}: {pod_selector:?}"),
                    Some(s) => format!("{s:?}: {pod_selector:?}"),
                };
                // Selected once per table: rules of many local pods name
                // the same peers.
                let chosen = match self.selections.get(&identity) {
                    Some(chosen) => Rc::clone(chosen),
                    None => {
                        let chosen =
                            Rc::new(self.selected(policy_ns, selector.as_ref(), pod_selector));
                        self.selections.insert(identity.clone(), Rc::clone(&chosen));
                        chosen
                    }
                };
                let text = if with_set {
                    let set = self.named("peer", identity.clone(), "type ipv4_addr ;", || {
                        chosen
                            .iter()
                            .filter_map(|p| Some(Element::Addr(v4(p.ip?)?)))
                            .collect()
                    });
                    format!("ip {field} @{set} ")
                } else {
                    String::new()
                };
                Some((
                    text,
                    PeerPods::Selected {
                        identity,
                        pods: chosen,
                    },
                ))
            }
            Peer::Block { cidr, except } => {
                let ipnet::IpNet::V4(cidr) = cidr else {
                    // The table is IPv4: an IPv6 block admits nothing here.
                    return None;
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
                Some((text, PeerPods::Block))
            }
            Peer::Nothing => None,
        }
    }
}

/// What a rule's peer stands for, for egress named ports.
enum PeerPods<'a> {
    /// No peer: every pod.
    Any,
    /// A block of addresses.
    Block,
    /// The pods a selector chose (`identity` names the selector).
    Selected {
        identity: String,
        pods: Rc<Vec<&'a Pod>>,
    },
}

/// `pod`'s port named `name` for `protocol`.
fn port_named(pod: &Pod, name: &str, protocol: Protocol) -> Option<u16> {
    pod.ports
        .iter()
        .find(|n| n.name == name && n.protocol == protocol)
        .map(|n| n.port)
}
