//! The fixed part of the proxy's nftables table `ip weft-proxy`: hooks,
//! shared maps and sets, and the chains every Service jumps to (pure).
//!
//! Packet path, for a new connection:
//! - filter prerouting/output (priority −110, before NAT): LoadBalancer
//!   source ranges (`firewall-ips`), then Services without endpoints are
//!   rejected (`no-endpoint-*` → `reject-chain`: TCP reset or ICMP port
//!   unreachable) instead of timing out.
//! - nat prerouting/output: `services` looks the destination up in
//!   `service-ips` (ClusterIPs, externalIPs, LoadBalancer IPs) and, for any
//!   local address but 127.0.0.0/8, in `service-nodeports`; both jump to the
//!   Service's own chain (see [`crate::plan`]).
//! - filter forward / output after DNAT: anything still addressed to a
//!   ClusterIP is a port no Service has: rejected.
//! - nat postrouting: masquerade what a Service chain marked, and hairpin
//!   connections (a pod reaching itself through its Service).
//!
//! Established connections never reach these chains: conntrack remembers the
//! NAT, which is why the table can be rewritten without disturbing them.

use std::fmt;

use weft_datapath::nft::Family;
use weft_datapath::nft_script::{Hook, Script, SetKind};

use crate::model::Protocol;
use crate::plan::{NodeContext, NodePortAddresses};

pub const FAMILY: &str = "ip";
pub const TABLE: &str = "weft-proxy";

/// A map or set of the table: one of the fixed ones, or the endpoint maps
/// shared by every Service port with the same protocol and number of
/// endpoints (see [`Pick`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collection {
    Fixed(&'static str),
    /// `frontend address . port . index` → endpoint.
    Endpoints(Pick),
    /// `nodePort . index` → endpoint.
    NodePortEndpoints(Pick),
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Collection::Fixed(name) => f.write_str(name),
            Collection::Endpoints(p) => write!(f, "eps-{}-{}", p.protocol.nft(), p.n),
            Collection::NodePortEndpoints(p) => write!(f, "npeps-{}-{}", p.protocol.nft(), p.n),
        }
    }
}

pub const SERVICE_IPS: Collection = Collection::Fixed("service-ips");
pub const SERVICE_NODEPORTS: Collection = Collection::Fixed("service-nodeports");
pub const NO_ENDPOINT_SERVICES: Collection = Collection::Fixed("no-endpoint-services");
pub const NO_ENDPOINT_NODEPORTS: Collection = Collection::Fixed("no-endpoint-nodeports");
pub const FIREWALL_IPS: Collection = Collection::Fixed("firewall-ips");
pub const CLUSTER_IPS: Collection = Collection::Fixed("cluster-ips");
pub const HAIRPIN: Collection = Collection::Fixed("hairpin");

/// The endpoint choice shared by every plain Service port (no affinity, no
/// traffic policy) of one protocol with `n` endpoints: one rule DNATs
/// through `numgen random mod n` into a map keyed by the address and port
/// the client used plus that number. Such a Service needs no chain of its
/// own — only map elements — so changing it is a few element updates, and
/// `nft`, which reads every chain of the table on each run, stays fast at
/// 10,000 Services. (One map per `n`, because a map bound by many rules
/// costs the kernel a walk of all its elements per binding.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pick {
    pub protocol: Protocol,
    pub n: usize,
}

impl Pick {
    /// Picks among the endpoints of the address the client used.
    pub fn chain(&self) -> String {
        format!("pick-{}-{}", self.protocol.nft(), self.n)
    }
    /// The same, for external addresses: masqueraded first.
    pub fn external_chain(&self) -> String {
        format!("pickx-{}-{}", self.protocol.nft(), self.n)
    }
    /// Picks among a NodePort's endpoints (masqueraded).
    pub fn node_port_chain(&self) -> String {
        format!("picknp-{}-{}", self.protocol.nft(), self.n)
    }
    pub fn chains(&self) -> [String; 3] {
        [self.chain(), self.external_chain(), self.node_port_chain()]
    }

    /// Its endpoint maps (what the chains look up).
    pub fn maps(&self) -> [Collection; 2] {
        [
            Collection::Endpoints(*self),
            Collection::NodePortEndpoints(*self),
        ]
    }

    /// Creates (or repairs) the maps and chains into `create`, and writes
    /// the chains' rules into `fill`.
    pub fn write(&self, create: &mut Script, fill: &mut Script) {
        let (proto, n) = (self.protocol.nft(), self.n);
        let endpoints = Collection::Endpoints(*self);
        let node_ports = Collection::NodePortEndpoints(*self);
        create
            .add_set(
                SetKind::Map,
                &endpoints.to_string(),
                &format!("typeof ip daddr . {proto} dport . numgen random mod {n} : ip daddr . {proto} dport;"),
            )
            .add_set(
                SetKind::Map,
                &node_ports.to_string(),
                &format!("typeof {proto} dport . numgen random mod {n} : ip daddr . {proto} dport;"),
            );
        let chains = [
            (self.chain(), vec![format!("meta l4proto {proto} dnat ip addr . port to ip daddr . {proto} dport . numgen random mod {n} map @{endpoints}")]),
            (self.external_chain(), vec![format!("jump {MARK_FOR_MASQUERADE}"), format!("goto {}", self.chain())]),
            (self.node_port_chain(), vec![
                format!("jump {MARK_FOR_MASQUERADE}"),
                format!("meta l4proto {proto} dnat ip addr . port to {proto} dport . numgen random mod {n} map @{node_ports}"),
            ]),
        ];
        for (name, rules) in chains {
            create.add_chain(&name, None);
            fill.flush_chain(&name);
            for rule in rules {
                fill.add_rule(&name, &rule);
            }
        }
    }
}

pub const REJECT_CHAIN: &str = "reject-chain";
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
pub const MARK_IF_OFF_CLUSTER: &str = "mark-if-off-cluster";

/// The packet mark bit that asks postrouting to masquerade (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// Every fixed map and set: name, `map`/`set`, type.
pub const COLLECTIONS: &[(Collection, SetKind, &str)] = &[
    (
        SERVICE_IPS,
        SetKind::Map,
        "type ipv4_addr . inet_proto . inet_service : verdict;",
    ),
    (
        SERVICE_NODEPORTS,
        SetKind::Map,
        "type inet_proto . inet_service : verdict;",
    ),
    (
        NO_ENDPOINT_SERVICES,
        SetKind::Map,
        "type ipv4_addr . inet_proto . inet_service : verdict;",
    ),
    (
        NO_ENDPOINT_NODEPORTS,
        SetKind::Map,
        "type inet_proto . inet_service : verdict;",
    ),
    (
        FIREWALL_IPS,
        SetKind::Map,
        "type ipv4_addr . inet_proto . inet_service : verdict;",
    ),
    (CLUSTER_IPS, SetKind::Set, "type ipv4_addr;"),
    (HAIRPIN, SetKind::Set, "type ipv4_addr . ipv4_addr;"),
];

/// A base chain's hook, accepting by default.
fn hook(chain_type: &'static str, hook: &'static str, priority: &str) -> Hook {
    Hook {
        chain_type,
        hook,
        priority: priority.into(),
        policy: Some("accept"),
    }
}

/// A script for the proxy's table.
pub fn script() -> Script {
    Script::new(Family::Ip, TABLE)
}

/// The chains of the fixed part, with their hook (if any) and rules.
fn base_chains(ctx: &NodeContext) -> Vec<(&'static str, Option<Hook>, Vec<String>)> {
    let s = |r: &str| r.to_string();
    let off_cluster = ctx
        .cluster_cidrs
        .iter()
        .map(|c| format!("ip saddr {c} return"))
        .chain((!ctx.cluster_cidrs.is_empty()).then(|| format!("jump {MARK_FOR_MASQUERADE}")))
        .collect();
    vec![
        (
            "nat-prerouting",
            Some(hook("nat", "prerouting", "dstnat")),
            vec![s("jump services")],
        ),
        (
            "nat-output",
            Some(hook("nat", "output", "-100")),
            vec![s("jump services")],
        ),
        (
            "nat-postrouting",
            Some(hook("nat", "postrouting", "srcnat")),
            vec![s("jump masquerading")],
        ),
        (
            "filter-prerouting",
            Some(hook("filter", "prerouting", "-110")),
            vec![
                s("ct state new jump firewall-check"),
                s("ct state new jump endpoints-check"),
            ],
        ),
        (
            "filter-output",
            Some(hook("filter", "output", "-110")),
            vec![
                s("ct state new jump firewall-check"),
                s("ct state new jump endpoints-check"),
            ],
        ),
        (
            "filter-forward",
            Some(hook("filter", "forward", "-110")),
            vec![s("ct state new jump cluster-ips-check")],
        ),
        (
            "filter-output-post-dnat",
            Some(hook("filter", "output", "-90")),
            vec![s("ct state new jump cluster-ips-check")],
        ),
        (
            "services",
            None,
            [
                format!("ip daddr @{CLUSTER_IPS} jump {MARK_IF_OFF_CLUSTER}"),
                format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
            ]
            .into_iter()
            .chain(node_ports(ctx, SERVICE_NODEPORTS))
            .collect(),
        ),
        (
            "endpoints-check",
            None,
            std::iter::once(format!(
                "ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"
            ))
            .chain(node_ports(ctx, NO_ENDPOINT_NODEPORTS))
            .collect(),
        ),
        (
            "firewall-check",
            None,
            vec![format!(
                "ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"
            )],
        ),
        (
            "cluster-ips-check",
            None,
            std::iter::once(format!("ip daddr @{CLUSTER_IPS} goto {REJECT_CHAIN}"))
                .chain(unallocated_cluster_ips(ctx))
                .collect(),
        ),
        (
            REJECT_CHAIN,
            None,
            vec![s("meta l4proto tcp reject with tcp reset"), s("reject")],
        ),
        (
            MARK_FOR_MASQUERADE,
            None,
            vec![format!("meta mark set meta mark or {MASQUERADE_MARK:#x}")],
        ),
        (MARK_IF_OFF_CLUSTER, None, off_cluster),
        (
            "masquerading",
            None,
            vec![
                format!("ct status dnat ip saddr . ip daddr @{HAIRPIN} masquerade"),
                format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
                format!("meta mark set meta mark xor {MASQUERADE_MARK:#x}"),
                s("masquerade fully-random"),
            ],
        ),
    ]
}

/// The rule that drops new connections to an address of the service
/// ranges that no Service has (they would leave the node by its default
/// route); none when the ranges are unknown.
fn unallocated_cluster_ips(ctx: &NodeContext) -> Option<String> {
    if ctx.service_cidrs.is_empty() {
        return None;
    }
    let cidrs: Vec<String> = ctx.service_cidrs.iter().map(|c| c.to_string()).collect();
    Some(format!("ip daddr {{ {} }} drop", cidrs.join(", ")))
}

/// The rule that sends NodePort traffic through `map`, on the addresses
/// `ctx` says; none when there is no such address.
fn node_ports(ctx: &NodeContext, map: Collection) -> Option<String> {
    let to = match &ctx.nodeport_addresses {
        NodePortAddresses::EveryLocal => "ip daddr != 127.0.0.0/8 fib daddr type local".to_string(),
        NodePortAddresses::Only(ips) if ips.is_empty() => return None,
        NodePortAddresses::Only(ips) => {
            let ips: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
            format!("ip daddr {{ {} }}", ips.join(", "))
        }
    };
    Some(format!("{to} meta l4proto . th dport vmap @{map}"))
}

/// Names of the fixed chains (a full sync never deletes these).
pub fn base_chain_names(ctx: &NodeContext) -> Vec<&'static str> {
    base_chains(ctx).into_iter().map(|(n, _, _)| n).collect()
}

/// Creates or repairs the fixed part. Idempotent; leaves the shared maps'
/// elements alone (a full sync refills them in its last transaction so
/// Services never disappear in between).
pub fn base_script(ctx: &NodeContext) -> String {
    let mut s = script();
    s.add_table();
    for (name, kind, declaration) in COLLECTIONS {
        s.add_set(*kind, &name.to_string(), declaration);
    }
    let chains = base_chains(ctx);
    // Create every chain first: rules may jump forward.
    for (name, hook, _) in &chains {
        s.add_chain(name, hook.as_ref());
    }
    for (name, _, rules) in &chains {
        s.flush_chain(name);
        for rule in rules {
            s.add_rule(name, rule);
        }
    }
    s.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_script_creates_every_collection_and_chain() {
        let ctx = NodeContext {
            node: "n".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            nodeport_addresses: NodePortAddresses::EveryLocal,
            zone: None,
            service_cidrs: vec![],
        };
        let script = base_script(&ctx);
        for (name, _, _) in COLLECTIONS {
            assert!(script.contains(&format!(" {name} {{")), "{name}");
        }
        for name in base_chain_names(&ctx) {
            assert!(script.contains(&format!("flush chain ip weft-proxy {name}\n")));
        }
        assert!(script.contains(
            "add rule ip weft-proxy mark-if-off-cluster ip saddr 10.244.0.0/16 return\nadd rule ip weft-proxy mark-if-off-cluster jump mark-for-masquerade\n"
        ));
        assert!(
            !script.contains(" drop"),
            "no service ranges known: {script}"
        );
    }

    #[test]
    fn unallocated_cluster_ips_of_the_service_ranges_are_dropped_after_the_known_ones() {
        let ctx = NodeContext {
            node: "n".into(),
            cluster_cidrs: vec![],
            nodeport_addresses: NodePortAddresses::EveryLocal,
            zone: None,
            service_cidrs: vec![
                "10.96.0.0/16".parse().unwrap(),
                "10.97.0.0/24".parse().unwrap(),
            ],
        };
        let script = base_script(&ctx);
        assert!(
            script.contains(
                "add rule ip weft-proxy cluster-ips-check ip daddr @cluster-ips goto reject-chain\nadd rule ip weft-proxy cluster-ips-check ip daddr { 10.96.0.0/16, 10.97.0.0/24 } drop\n"
            ),
            "{script}"
        );
    }

    #[test]
    fn node_ports_answer_on_the_addresses_asked_for() {
        let mut ctx = NodeContext {
            node: "n".into(),
            cluster_cidrs: vec![],
            nodeport_addresses: NodePortAddresses::Only(vec![
                "198.18.0.11".parse().unwrap(),
                "198.18.1.11".parse().unwrap(),
            ]),
            zone: None,
            service_cidrs: vec![],
        };
        let script = base_script(&ctx);
        assert!(
            script.contains("ip daddr { 198.18.0.11, 198.18.1.11 } meta l4proto . th dport vmap @service-nodeports"),
            "{script}"
        );
        assert!(!script.contains("fib daddr type local"), "{script}");
        ctx.nodeport_addresses = NodePortAddresses::Only(Vec::new());
        assert!(!base_script(&ctx).contains("@service-nodeports"));
        ctx.nodeport_addresses = NodePortAddresses::EveryLocal;
        assert!(base_script(&ctx).contains(
            "ip daddr != 127.0.0.0/8 fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports"
        ));
    }

    #[test]
    fn without_a_cluster_cidr_nothing_is_marked_for_cluster_ips() {
        let ctx = NodeContext {
            node: "n".into(),
            cluster_cidrs: vec![],
            nodeport_addresses: NodePortAddresses::EveryLocal,
            zone: None,
            service_cidrs: vec![],
        };
        assert!(!base_script(&ctx).contains("mark-if-off-cluster jump"));
    }
}
