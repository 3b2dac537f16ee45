//! One Service → the chains, sets and map elements it owns in the proxy's
//! nftables table (pure).
//!
//! The shape follows kube-proxy's nftables mode — a verdict map on
//! `daddr . proto . dport` and one on NodePorts, matched on every local
//! address — made leaner for speed. A plain port (no affinity, no Local
//! traffic policy) has no chain of its own: its map entry jumps to a
//! [`Pick`] chain shared by all ports of its protocol with as many
//! endpoints, which DNATs through `numgen` into an endpoint map keyed by the
//! frontend; the port is only map elements. Ports that need logic of their
//! own get a Service chain whose `numgen` rules DNAT directly (endpoint *i*
//! of *n* is taken with probability 1/(n−i), which is uniform), and an
//! endpoint gets a chain only when ClientIP affinity needs one. Hairpin
//! traffic (a pod reaching itself through its Service) is masqueraded by a
//! shared set of `addr . addr` pairs instead of a rule per endpoint.
//!
//! This module must not touch the kernel or keep state between calls.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use crate::model::{
    cluster_endpoints, usable, Endpoint, PortEndpoints, Protocol, ServiceInfo, ServicePortInfo,
    SourceRanges,
};
use crate::table::{self, Collection, Pick};

/// What a node needs to know to plan Services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    pub node: String,
    /// The pod network(s): traffic from elsewhere to a ClusterIP is
    /// masqueraded so replies come back through this node.
    pub cluster_cidrs: Vec<Ipv4Net>,
    /// Where NodePorts answer.
    pub nodeport_addresses: NodePortAddresses,
    /// The node's `topology.kubernetes.io/zone`, for topology hints.
    pub zone: Option<String>,
    /// The service ranges (ServiceCIDRs): new connections to an address in
    /// them that no Service has are dropped.
    pub service_cidrs: Vec<Ipv4Net>,
}

/// The node addresses NodePorts answer on (kube-proxy's
/// `--nodeport-addresses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address but loopback (the pod bridge's and the VXLAN
    /// device's too).
    EveryLocal,
    /// These addresses only (kube-proxy's default: the node's primary).
    Only(Vec<std::net::Ipv4Addr>),
}

/// One element of one of the table's shared maps or sets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub map: Collection,
    pub key: String,
    /// `None` for set elements.
    pub value: Option<String>,
    /// For an endpoint-map element: the `service-ips` or
    /// `service-nodeports` key it serves (it goes wherever that one goes).
    pub frontend: Option<String>,
}

impl Element {
    fn new(map: Collection, key: String, value: Option<String>) -> Self {
        Element {
            map,
            key,
            value,
            frontend: None,
        }
    }

    /// The element as written inside `{ }` of an `add element`.
    pub fn add_text(&self) -> String {
        match &self.value {
            Some(v) => format!("{} : {v}", self.key),
            None => self.key.clone(),
        }
    }
}

/// Everything one Service contributes to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ServiceRules {
    /// Dynamic sets (ClientIP affinity), name → declaration.
    pub sets: BTreeMap<String, String>,
    /// Chain name → its rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    pub elements: BTreeSet<Element>,
    /// Endpoints on this node: a connection from one of them to itself
    /// through the Service must be masqueraded.
    pub hairpin: BTreeSet<Ipv4Addr>,
    /// UDP ports and where they lead, to find stale conntrack flows.
    pub udp: BTreeMap<String, UdpPort>,
    /// The shared endpoint choices this Service uses.
    pub picks: BTreeSet<Pick>,
}

/// A UDP Service port: the addresses clients send to and the endpoints
/// behind them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UdpPort {
    pub destinations: Vec<Ipv4Addr>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// The endpoints still serving (flows to others are stale).
    pub endpoints: BTreeSet<Ipv4Addr>,
}

/// Plans a whole Service.
pub fn plan_service(
    svc: &ServiceInfo,
    endpoints: &PortEndpoints,
    ctx: &NodeContext,
) -> ServiceRules {
    let mut rules = ServiceRules::default();
    for port in &svc.ports {
        let eps = endpoints
            .get(&(port.name.clone(), port.protocol))
            .map(Vec::as_slice)
            .unwrap_or_default();
        plan_port(&mut rules, svc, port, eps, ctx);
    }
    drop_duplicate_keys(&mut rules, svc);
    rules
}

/// One Service can name the same address and port twice (a port listed
/// twice, an externalIP that is also its LoadBalancer address); two values
/// for one map key would make `nft` reject every transaction carrying
/// them, so the first (in key, then value order) wins and the rest is
/// logged.
fn drop_duplicate_keys(rules: &mut ServiceRules, svc: &ServiceInfo) {
    let mut last: Option<(Collection, String)> = None;
    rules.elements.retain(|e| {
        let duplicate = last
            .as_ref()
            .is_some_and(|(map, key)| *map == e.map && *key == e.key);
        if duplicate {
            tracing::warn!(service = %svc.key, map = %e.map, element = %e.key, "the Service names this address and port twice; the first one is programmed");
        } else {
            last = Some((e.map, e.key.clone()));
        }
        !duplicate
    });
}

/// Names of one Service port's chains and sets.
///
/// Service, namespace and port names come from the store unchecked (it may
/// hold objects that never passed the API server's validation), so none is
/// copied into a name as is: each name is a prefix, a hash of the exact
/// fields (length-prefixed, so `a/b` + `c` and `a` + `b/c` differ) and a
/// readable tail reduced to the characters nft takes unquoted and cut to a
/// fixed length. The hash keeps names apart, the tail only helps a reader.
struct PortNames {
    /// The fields that identify the port, in hash order.
    fields: [String; 4],
    /// The readable tail: `namespace/name/protocol/port`, made safe.
    tail: String,
}

/// Hex digits of the hash in a name: 64 bits, so 10,000 Services × a few
/// ports collide with a probability of about 1 in 10^10.
const NAME_HASH_HEX: usize = 16;
/// Characters of the readable tail kept; every name stays far below nft's
/// 256-character limit for chain and set names.
const NAME_TAIL_MAX: usize = 64;

impl PortNames {
    fn new(svc: &ServiceInfo, port: &ServicePortInfo) -> Self {
        let fields = [
            svc.key.namespace.to_string(),
            svc.key.name.to_string(),
            port.protocol.nft().to_string(),
            port.name.clone(),
        ];
        PortNames {
            tail: readable(&fields.join("/")),
            fields,
        }
    }
    /// The port's identity for logs and the UDP index (not for nft).
    fn id(&self) -> String {
        self.fields.join("/")
    }
    fn port_name(&self, prefix: &str, extra: &[&str]) -> String {
        let fields: Vec<&str> = self
            .fields
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
            .collect();
        format!("{prefix}-{}-{}", name_hash(&fields), self.tail)
    }
    fn cluster(&self) -> String {
        self.port_name("svc", &[])
    }
    /// Every endpoint, when the internal chain is limited to local ones.
    fn all_endpoints(&self) -> String {
        self.port_name("all", &[])
    }
    fn external(&self) -> String {
        self.port_name("ext", &[])
    }
    fn firewall(&self) -> String {
        self.port_name("fw", &[])
    }
    fn endpoint(&self, ep: &Endpoint) -> String {
        let (ip, port) = (ep.ip.to_string(), ep.port.to_string());
        format!("{}__{ip}/{port}", self.port_name("sep", &[&ip, &port]))
    }
    /// The timeout is part of the name, so a changed timeout is a new set
    /// rather than an in-place change nft cannot make.
    fn affinity(&self, ep: &Endpoint, seconds: u32) -> String {
        let (ip, port) = (ep.ip.to_string(), ep.port.to_string());
        let seconds = seconds.to_string();
        format!(
            "{}__{ip}/{port}",
            self.port_name("aff", &[&ip, &port, &seconds])
        )
    }
}

/// A hash of `fields` that no other list of fields shares (each is
/// length-prefixed before hashing).
fn name_hash(fields: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    let digest = hasher.finalize();
    digest[..NAME_HASH_HEX / 2]
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `text` with every character nft would not take in an unquoted name
/// replaced by `_`, cut to [`NAME_TAIL_MAX`] characters.
fn readable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_/.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(NAME_TAIL_MAX)
        .collect()
}

fn plan_port(
    rules: &mut ServiceRules,
    svc: &ServiceInfo,
    port: &ServicePortInfo,
    eps: &[Endpoint],
    ctx: &NodeContext,
) {
    let names = PortNames::new(svc, port);
    let proto = port.protocol.nft();
    let all = cluster_endpoints(eps, &ctx.node, ctx.zone.as_deref());
    let local = usable(eps.iter().filter(|e| e.is_local(&ctx.node)));
    rules.hairpin.extend(local.iter().map(|e| e.ip));
    if let Some(ip) = port.cluster_ip {
        rules
            .elements
            .insert(Element::new(table::CLUSTER_IPS, ip.to_string(), None));
    }
    // Each external address once, and never the ClusterIP itself (that
    // one stays internal).
    let external_dsts: Vec<Ipv4Addr> = port
        .external_ips
        .iter()
        .chain(&port.load_balancer_ips)
        .copied()
        .filter(|ip| Some(*ip) != port.cluster_ip)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if port.protocol == Protocol::Udp {
        rules.udp.insert(
            names.id(),
            UdpPort {
                destinations: port
                    .cluster_ip
                    .iter()
                    .chain(&external_dsts)
                    .copied()
                    .collect(),
                port: port.port,
                node_port: port.node_port,
                // Every endpoint still serving, used or not: a flow to a
                // pod that terminates keeps going while the pod serves, as
                // with kube-proxy; it is stale once the pod stops serving.
                endpoints: eps.iter().filter(|e| e.serving).map(|e| e.ip).collect(),
            },
        );
    }

    if all.is_empty() {
        // Nothing can answer: reject (RST / ICMP port unreachable) instead of
        // letting clients time out.
        let verdict = Some(format!("goto {}", table::REJECT_CHAIN));
        for ip in port.cluster_ip.iter().chain(&external_dsts) {
            rules.elements.insert(Element::new(
                table::NO_ENDPOINT_SERVICES,
                service_key(*ip, proto, port.port),
                verdict.clone(),
            ));
        }
        if let Some(np) = port.node_port {
            rules.elements.insert(Element::new(
                table::NO_ENDPOINT_NODEPORTS,
                format!("{proto} . {np}"),
                verdict.clone(),
            ));
        }
        // Clients outside the source ranges are dropped before the reject,
        // as kube-proxy does: they must not learn the Service is there.
        plan_firewall(rules, &names, port);
        return;
    }

    // Internal traffic (to the ClusterIP) follows internalTrafficPolicy;
    // external traffic with externalTrafficPolicy: Cluster, and pods or the
    // node itself reaching an external address, use every endpoint.
    if port.affinity_seconds.is_none() && !port.internal_local && !port.external_local {
        plan_plain_port(rules, port, &all, &external_dsts);
        plan_firewall(rules, &names, port);
        return;
    }
    let internal = names.cluster();
    let mut chain = Vec::new();
    let internal_eps = if port.internal_local { &local } else { &all };
    chain.extend(dispatch(
        rules,
        &names,
        port,
        internal_eps,
        "no local endpoints (internalTrafficPolicy: Local)",
    ));
    rules.chains.insert(internal.clone(), chain);
    if let Some(ip) = port.cluster_ip {
        rules.elements.insert(Element::new(
            table::SERVICE_IPS,
            service_key(ip, proto, port.port),
            Some(format!("goto {internal}")),
        ));
    }

    if !port.has_external() {
        return;
    }
    let every_endpoint = if port.internal_local {
        let name = names.all_endpoints();
        let chain = dispatch(rules, &names, port, &all, "no endpoints");
        rules.chains.insert(name.clone(), chain);
        name
    } else {
        internal
    };
    let external = names.external();
    let chain = if port.external_local {
        let mut chain: Vec<String> = ctx
            .cluster_cidrs
            .iter()
            .map(|cidr| format!("ip saddr {cidr} goto {every_endpoint}"))
            .collect();
        chain.push(format!(
            "fib saddr type local jump {}",
            table::MARK_FOR_MASQUERADE
        ));
        chain.push(format!("fib saddr type local goto {every_endpoint}"));
        chain.extend(dispatch(
            rules,
            &names,
            port,
            &local,
            "no local endpoints (externalTrafficPolicy: Local)",
        ));
        chain
    } else {
        vec![
            format!("jump {}", table::MARK_FOR_MASQUERADE),
            format!("goto {every_endpoint}"),
        ]
    };
    rules.chains.insert(external.clone(), chain);
    for ip in &external_dsts {
        rules.elements.insert(Element::new(
            table::SERVICE_IPS,
            service_key(*ip, proto, port.port),
            Some(format!("goto {external}")),
        ));
    }
    if let Some(np) = port.node_port {
        rules.elements.insert(Element::new(
            table::SERVICE_NODEPORTS,
            format!("{proto} . {np}"),
            Some(format!("goto {external}")),
        ));
    }
    plan_firewall(rules, &names, port);
}

/// `loadBalancerSourceRanges`: LoadBalancer addresses accept only those
/// sources (checked before NAT, in `firewall-check`); no usable range means
/// no client at all (see [`SourceRanges`]).
fn plan_firewall(rules: &mut ServiceRules, names: &PortNames, port: &ServicePortInfo) {
    let SourceRanges::Only(ranges) = &port.source_ranges else {
        return;
    };
    if port.load_balancer_ips.is_empty() {
        return;
    }
    let firewall = names.firewall();
    let mut chain: Vec<String> = ranges
        .iter()
        .map(|r| format!("ip saddr {r} return"))
        .collect();
    chain.push("drop comment \"not in loadBalancerSourceRanges\"".into());
    rules.chains.insert(firewall.clone(), chain);
    for ip in &port.load_balancer_ips {
        rules.elements.insert(Element::new(
            table::FIREWALL_IPS,
            service_key(*ip, port.protocol.nft(), port.port),
            Some(format!("goto {firewall}")),
        ));
    }
}

/// A port without affinity or traffic policies: no chain of its own, only
/// elements in the shared maps of its [`Pick`].
fn plan_plain_port(
    rules: &mut ServiceRules,
    port: &ServicePortInfo,
    eps: &[&Endpoint],
    external_dsts: &[Ipv4Addr],
) {
    let pick = Pick {
        protocol: port.protocol,
        n: eps.len(),
    };
    rules.picks.insert(pick);
    let proto = port.protocol.nft();
    let frontends = port
        .cluster_ip
        .iter()
        .map(|ip| (ip, pick.chain()))
        .chain(external_dsts.iter().map(|ip| (ip, pick.external_chain())));
    for (ip, chain) in frontends {
        let frontend = service_key(*ip, proto, port.port);
        for (i, e) in eps.iter().enumerate() {
            rules.elements.insert(Element {
                map: Collection::Endpoints(pick),
                key: format!("{ip} . {} . {i}", port.port),
                value: Some(format!("{} . {}", e.ip, e.port)),
                frontend: Some(frontend.clone()),
            });
        }
        rules.elements.insert(Element::new(
            table::SERVICE_IPS,
            frontend,
            Some(format!("goto {chain}")),
        ));
    }
    if let Some(np) = port.node_port {
        let frontend = format!("{proto} . {np}");
        for (i, e) in eps.iter().enumerate() {
            rules.elements.insert(Element {
                map: Collection::NodePortEndpoints(pick),
                key: format!("{np} . {i}"),
                value: Some(format!("{} . {}", e.ip, e.port)),
                frontend: Some(frontend.clone()),
            });
        }
        rules.elements.insert(Element::new(
            table::SERVICE_NODEPORTS,
            frontend,
            Some(format!("goto {}", pick.node_port_chain())),
        ));
    }
}

fn service_key(ip: Ipv4Addr, proto: &str, port: u16) -> String {
    format!("{ip} . {proto} . {port}")
}

/// Rules that send a new connection to one of `eps`; `drop` (with `why`)
/// when there is none.
fn dispatch(
    rules: &mut ServiceRules,
    names: &PortNames,
    port: &ServicePortInfo,
    eps: &[&Endpoint],
    why: &str,
) -> Vec<String> {
    if eps.is_empty() {
        return vec![format!("drop comment \"{why}\"")];
    }
    let proto = port.protocol.nft();
    let targets: Vec<String> = match port.affinity_seconds {
        None => eps
            .iter()
            .map(|e| format!("meta l4proto {proto} dnat to {}:{}", e.ip, e.port))
            .collect(),
        Some(seconds) => eps
            .iter()
            .map(|e| format!("goto {}", endpoint_chain(rules, names, port, e, seconds)))
            .collect(),
    };
    let mut out = Vec::new();
    if let Some(seconds) = port.affinity_seconds {
        for e in eps {
            out.push(format!(
                "ip saddr @{} goto {}",
                names.affinity(e, seconds),
                names.endpoint(e)
            ));
        }
    }
    let n = targets.len();
    for (i, target) in targets.into_iter().enumerate() {
        if i + 1 == n {
            out.push(target);
        } else {
            out.push(format!("numgen random mod {} == 0 {target}", n - i));
        }
    }
    out
}

/// The chain (and affinity set) of one endpoint of a ClientIP-affinity
/// Service; returns the chain's name.
fn endpoint_chain(
    rules: &mut ServiceRules,
    names: &PortNames,
    port: &ServicePortInfo,
    ep: &Endpoint,
    seconds: u32,
) -> String {
    let chain = names.endpoint(ep);
    let set = names.affinity(ep, seconds);
    rules.sets.insert(
        set.clone(),
        format!("type ipv4_addr; flags dynamic,timeout; timeout {seconds}s;"),
    );
    rules.chains.insert(
        chain.clone(),
        vec![
            format!("update @{set} {{ ip saddr }}"),
            format!(
                "meta l4proto {} dnat to {}:{}",
                port.protocol.nft(),
                ep.ip,
                ep.port
            ),
        ],
    );
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pick's create and fill scripts, as text.
    fn pick_scripts(pick: Pick) -> (String, String) {
        let (mut create, mut fill) = (table::script(), table::script());
        pick.write(&mut create, &mut fill);
        (create.into_string(), fill.into_string())
    }
    use crate::model::ServiceKey;

    fn ctx() -> NodeContext {
        NodeContext {
            node: "node-1".into(),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            nodeport_addresses: NodePortAddresses::EveryLocal,
            zone: None,
            service_cidrs: vec![],
        }
    }

    fn port() -> ServicePortInfo {
        ServicePortInfo {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
            external_ips: vec![],
            load_balancer_ips: vec![],
            affinity_seconds: None,
            external_local: false,
            internal_local: false,
            source_ranges: SourceRanges::Any,
        }
    }

    fn svc(port: ServicePortInfo) -> ServiceInfo {
        ServiceInfo {
            key: ServiceKey {
                namespace: "demo".into(),
                name: "web".into(),
            },
            ports: vec![port],
            health_check_node_port: None,
            load_balancer_class: None,
            cluster_ip: None,
        }
    }

    fn ep(ip: &str, node: &str, ready: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 8080,
            ready,
            serving: ready,
            terminating: false,
            place: crate::model::Place::on(node),
        }
    }

    fn eps(list: Vec<Endpoint>) -> PortEndpoints {
        [(("http".to_string(), Protocol::Tcp), list)].into()
    }

    fn chain<'a>(rules: &'a ServiceRules, prefix: &str) -> &'a Vec<String> {
        rules
            .chains
            .iter()
            .find(|(name, _)| name.starts_with(prefix))
            .map(|(_, r)| r)
            .unwrap_or_else(|| panic!("no chain {prefix}* in {:?}", rules.chains.keys()))
    }

    fn values(rules: &ServiceRules, map: Collection) -> Vec<String> {
        rules
            .elements
            .iter()
            .filter(|e| e.map == map)
            .map(Element::add_text)
            .collect()
    }

    fn pick(n: usize) -> Pick {
        Pick {
            protocol: Protocol::Tcp,
            n,
        }
    }

    #[test]
    fn an_address_and_port_named_twice_is_programmed_once() {
        let mut p = port();
        p.external_ips = vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(198, 18, 0, 9)];
        p.load_balancer_ips = vec![Ipv4Addr::new(198, 18, 0, 9)];
        let mut twice = port();
        twice.name = "again".into();
        let mut info = svc(p);
        info.ports.push(twice);
        let mut by_port = eps(vec![ep("10.244.1.2", "node-1", true)]);
        // The same port under another name, with other endpoints: another
        // value for the same key.
        let two = vec![
            ep("10.244.1.2", "node-1", true),
            ep("10.244.2.2", "node-2", true),
        ];
        by_port.insert(("again".to_string(), Protocol::Tcp), two);
        let rules = plan_service(&info, &by_port, &ctx());
        let ips = values(&rules, table::SERVICE_IPS);
        assert_eq!(
            ips,
            vec![
                "10.96.0.10 . tcp . 80 : goto pick-tcp-1".to_string(),
                "198.18.0.9 . tcp . 80 : goto pickx-tcp-1".to_string(),
            ]
        );
        let mut keys: Vec<_> = rules.elements.iter().map(|e| (e.map, &e.key)).collect();
        let all = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), all, "one value per key");
    }

    #[test]
    fn a_plain_cluster_ip_is_only_map_elements_over_its_ready_endpoints() {
        let list = vec![
            ep("10.244.1.2", "node-1", true),
            ep("10.244.2.2", "node-2", true),
            ep("10.244.3.2", "node-3", true),
            ep("10.244.3.3", "node-3", false),
        ];
        let rules = plan_service(&svc(port()), &eps(list), &ctx());
        assert!(
            rules.chains.is_empty(),
            "no chain of its own: {:?}",
            rules.chains
        );
        assert_eq!(rules.picks, [pick(3)].into());
        assert_eq!(
            values(&rules, Collection::Endpoints(pick(3))),
            vec![
                "10.96.0.10 . 80 . 0 : 10.244.1.2 . 8080".to_string(),
                "10.96.0.10 . 80 . 1 : 10.244.2.2 . 8080".into(),
                "10.96.0.10 . 80 . 2 : 10.244.3.2 . 8080".into(),
            ]
        );
        assert_eq!(
            values(&rules, table::SERVICE_IPS),
            vec!["10.96.0.10 . tcp . 80 : goto pick-tcp-3".to_string()]
        );
        assert_eq!(values(&rules, table::CLUSTER_IPS), vec!["10.96.0.10"]);
        assert_eq!(rules.hairpin, [Ipv4Addr::new(10, 244, 1, 2)].into());
        let (create, fill) = pick_scripts(pick(3));
        assert!(create.contains("eps-tcp-3 { typeof ip daddr . tcp dport . numgen random mod 3 : ip daddr . tcp dport; }"));
        assert!(fill.lines().any(|r| r.ends_with("pick-tcp-3 meta l4proto tcp dnat ip addr . port to ip daddr . tcp dport . numgen random mod 3 map @eps-tcp-3")));
    }

    #[test]
    fn special_ports_get_numgen_rules_that_pick_uniformly() {
        let mut p = port();
        p.internal_local = true;
        let list = vec![
            ep("10.244.1.2", "node-1", true),
            ep("10.244.1.3", "node-1", true),
            ep("10.244.1.4", "node-1", true),
        ];
        let rules = plan_service(&svc(p), &eps(list), &ctx());
        assert_eq!(
            chain(&rules, "svc-"),
            &vec![
                "numgen random mod 3 == 0 meta l4proto tcp dnat to 10.244.1.2:8080".to_string(),
                "numgen random mod 2 == 0 meta l4proto tcp dnat to 10.244.1.3:8080".into(),
                "meta l4proto tcp dnat to 10.244.1.4:8080".into(),
            ]
        );
        let svc_chain = rules.chains.keys().next().unwrap();
        assert!(svc_chain.ends_with("-demo/web/tcp/http"), "{svc_chain}");
        assert_eq!(
            values(&rules, table::SERVICE_IPS),
            vec![format!("10.96.0.10 . tcp . 80 : goto {svc_chain}")]
        );
    }

    #[test]
    fn no_endpoints_rejects_on_every_address() {
        let mut p = port();
        p.node_port = Some(30080);
        p.external_ips = vec![Ipv4Addr::new(198, 18, 0, 99)];
        let rules = plan_service(
            &svc(p),
            &eps(vec![ep("10.244.1.2", "node-1", false)]),
            &ctx(),
        );
        assert!(rules.chains.is_empty());
        assert_eq!(
            values(&rules, table::NO_ENDPOINT_SERVICES),
            vec![
                "10.96.0.10 . tcp . 80 : goto reject-chain".to_string(),
                "198.18.0.99 . tcp . 80 : goto reject-chain".into()
            ]
        );
        assert_eq!(
            values(&rules, table::NO_ENDPOINT_NODEPORTS),
            vec!["tcp . 30080 : goto reject-chain".to_string()]
        );
        assert!(values(&rules, table::SERVICE_IPS).is_empty());
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let mut term = ep("10.244.2.2", "node-2", false);
        term.serving = true;
        term.terminating = true;
        let rules = plan_service(&svc(port()), &eps(vec![term.clone()]), &ctx());
        assert_eq!(
            values(&rules, Collection::Endpoints(pick(1))),
            vec!["10.96.0.10 . 80 . 0 : 10.244.2.2 . 8080".to_string()]
        );
        let both = vec![term, ep("10.244.1.2", "node-1", true)];
        let rules = plan_service(&svc(port()), &eps(both), &ctx());
        assert_eq!(
            values(&rules, Collection::Endpoints(pick(1))),
            vec!["10.96.0.10 . 80 . 0 : 10.244.1.2 . 8080".to_string()]
        );
    }

    #[test]
    fn node_ports_and_load_balancers_of_cluster_policy_are_masqueraded() {
        let mut p = port();
        p.node_port = Some(30080);
        p.load_balancer_ips = vec![Ipv4Addr::new(198, 18, 0, 240)];
        let rules = plan_service(
            &svc(p),
            &eps(vec![ep("10.244.2.2", "node-2", true)]),
            &ctx(),
        );
        assert!(rules.chains.is_empty());
        assert_eq!(
            values(&rules, table::SERVICE_NODEPORTS),
            vec!["tcp . 30080 : goto picknp-tcp-1".to_string()]
        );
        assert_eq!(
            values(&rules, Collection::NodePortEndpoints(pick(1))),
            vec!["30080 . 0 : 10.244.2.2 . 8080".to_string()]
        );
        assert!(values(&rules, table::SERVICE_IPS)
            .contains(&"198.18.0.240 . tcp . 80 : goto pickx-tcp-1".to_string()));
        assert!(values(&rules, Collection::Endpoints(pick(1)))
            .contains(&"198.18.0.240 . 80 . 0 : 10.244.2.2 . 8080".to_string()));
        let (_, fill) = pick_scripts(pick(1));
        assert!(fill
            .lines()
            .any(|r| r.ends_with("pickx-tcp-1 jump mark-for-masquerade")));
        assert!(fill
            .lines()
            .any(|r| r.ends_with("picknp-tcp-1 jump mark-for-masquerade")));
        assert!(rules.hairpin.is_empty(), "the endpoint is not on this node");
    }

    #[test]
    fn external_local_keeps_source_and_drops_without_local_endpoints() {
        let mut p = port();
        p.node_port = Some(30080);
        p.external_local = true;
        let remote_only = eps(vec![ep("10.244.2.2", "node-2", true)]);
        let rules = plan_service(&svc(p.clone()), &remote_only, &ctx());
        let ext = chain(&rules, "ext-");
        assert!(ext[0].starts_with("ip saddr 10.244.0.0/16 goto svc-"));
        assert_eq!(ext[1], "fib saddr type local jump mark-for-masquerade");
        assert!(ext[2].starts_with("fib saddr type local goto svc-"));
        assert_eq!(
            ext[3],
            "drop comment \"no local endpoints (externalTrafficPolicy: Local)\""
        );
        assert!(!ext.iter().any(|r| r == "jump mark-for-masquerade"));
        let with_local = eps(vec![
            ep("10.244.2.2", "node-2", true),
            ep("10.244.1.7", "node-1", true),
        ]);
        let rules = plan_service(&svc(p), &with_local, &ctx());
        assert_eq!(
            chain(&rules, "ext-").last().unwrap(),
            "meta l4proto tcp dnat to 10.244.1.7:8080"
        );
    }

    #[test]
    fn internal_local_uses_only_local_endpoints() {
        let mut p = port();
        p.internal_local = true;
        let rules = plan_service(
            &svc(p.clone()),
            &eps(vec![ep("10.244.2.2", "node-2", true)]),
            &ctx(),
        );
        assert_eq!(
            chain(&rules, "svc-").last().unwrap(),
            "drop comment \"no local endpoints (internalTrafficPolicy: Local)\""
        );
        let rules = plan_service(
            &svc(p),
            &eps(vec![
                ep("10.244.2.2", "node-2", true),
                ep("10.244.1.3", "node-1", true),
            ]),
            &ctx(),
        );
        assert_eq!(
            chain(&rules, "svc-").last().unwrap(),
            "meta l4proto tcp dnat to 10.244.1.3:8080"
        );
    }

    #[test]
    fn external_traffic_ignores_internal_traffic_policy() {
        let mut p = port();
        p.internal_local = true;
        p.external_ips = vec![Ipv4Addr::new(198, 19, 0, 80)];
        let rules = plan_service(
            &svc(p),
            &eps(vec![ep("10.244.2.2", "node-2", true)]),
            &ctx(),
        );
        assert!(chain(&rules, "svc-").last().unwrap().starts_with("drop"));
        assert!(chain(&rules, "ext-")[1].starts_with("goto all-"));
        assert_eq!(
            chain(&rules, "all-"),
            &vec!["meta l4proto tcp dnat to 10.244.2.2:8080".to_string()]
        );
    }

    #[test]
    fn affinity_gives_endpoints_chains_and_timed_sets() {
        let mut p = port();
        p.affinity_seconds = Some(30);
        let list = vec![
            ep("10.244.1.2", "node-1", true),
            ep("10.244.2.2", "node-2", true),
        ];
        let rules = plan_service(&svc(p.clone()), &eps(list.clone()), &ctx());
        assert_eq!(rules.sets.len(), 2);
        assert!(rules
            .sets
            .values()
            .all(|d| d == "type ipv4_addr; flags dynamic,timeout; timeout 30s;"));
        let svc_rules = chain(&rules, "svc-");
        assert!(svc_rules[0].starts_with("ip saddr @aff-") && svc_rules[0].contains(" goto sep-"));
        assert!(svc_rules[2].starts_with("numgen random mod 2 == 0 goto sep-"));
        let sep = chain(&rules, "sep-");
        assert!(sep[0].starts_with("update @aff-") && sep[0].ends_with("{ ip saddr }"));
        assert_eq!(rules.chains.len(), 3);
        p.affinity_seconds = Some(60);
        let changed = plan_service(&svc(p), &eps(list), &ctx());
        assert!(changed.sets.keys().all(|k| !rules.sets.contains_key(k)));
    }

    #[test]
    fn source_ranges_guard_load_balancer_addresses_only() {
        let firewall = |ranges: Vec<ipnet::Ipv4Net>| {
            let mut p = port();
            p.load_balancer_ips = vec![Ipv4Addr::new(198, 18, 0, 240)];
            p.source_ranges = SourceRanges::Only(ranges);
            let rules = plan_service(
                &svc(p),
                &eps(vec![ep("10.244.2.2", "node-2", true)]),
                &ctx(),
            );
            let fw = values(&rules, table::FIREWALL_IPS);
            assert!(fw[0].starts_with("198.18.0.240 . tcp . 80 : goto fw-"));
            chain(&rules, "fw-").clone()
        };
        let drop = "drop comment \"not in loadBalancerSourceRanges\"".to_string();
        assert_eq!(
            firewall(vec!["198.18.0.2/32".parse().unwrap()]),
            vec!["ip saddr 198.18.0.2/32 return".to_string(), drop.clone()]
        );
        // No usable range (an unreadable entry): every client is dropped.
        assert_eq!(firewall(vec![]), vec![drop]);
        // Without endpoints too: the drop comes before the reject.
        let mut p = port();
        p.load_balancer_ips = vec![Ipv4Addr::new(198, 18, 0, 240)];
        p.source_ranges = SourceRanges::Only(vec!["198.18.0.2/32".parse().unwrap()]);
        let rules = plan_service(&svc(p), &eps(vec![]), &ctx());
        assert!(values(&rules, table::FIREWALL_IPS)[0]
            .starts_with("198.18.0.240 . tcp . 80 : goto fw-"));
        assert!(values(&rules, table::NO_ENDPOINT_SERVICES)
            .iter()
            .any(|v| v.starts_with("198.18.0.240 . tcp . 80 : goto")));
    }

    #[test]
    fn udp_uses_its_own_protocol_maps() {
        let mut p = port();
        p.protocol = Protocol::Udp;
        let rules = plan_service(
            &svc(p),
            &[(
                ("http".to_string(), Protocol::Udp),
                vec![ep("10.244.2.2", "node-2", true)],
            )]
            .into(),
            &ctx(),
        );
        let udp = Pick {
            protocol: Protocol::Udp,
            n: 1,
        };
        assert_eq!(rules.picks, [udp].into());
        assert!(values(&rules, table::SERVICE_IPS)[0]
            .starts_with("10.96.0.10 . udp . 80 : goto pick-udp-1"));
        assert!(pick_scripts(udp)
            .0
            .contains("eps-udp-1 { typeof ip daddr . udp dport"));
        assert_eq!(rules.udp.len(), 1);
    }

    #[test]
    fn udp_flows_to_a_terminating_pod_are_kept_while_it_serves() {
        let mut p = port();
        p.protocol = Protocol::Udp;
        let terminating = |serving| Endpoint {
            serving,
            terminating: true,
            ..ep("10.244.2.3", "node-2", false)
        };
        let plan = |second: Endpoint| {
            let list = vec![ep("10.244.2.2", "node-2", true), second];
            plan_service(
                &svc(p.clone()),
                &[(("http".to_string(), Protocol::Udp), list)].into(),
                &ctx(),
            )
        };
        let serving = plan(terminating(true));
        let kept: Vec<String> = serving
            .udp
            .values()
            .next()
            .unwrap()
            .endpoints
            .iter()
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(kept, ["10.244.2.2", "10.244.2.3"]);
        // New flows go to the ready pod only.
        assert_eq!(serving.picks.iter().next().map(|p| p.n), Some(1));
        let stopped = plan(terminating(false));
        assert_eq!(stopped.udp.values().next().unwrap().endpoints.len(), 1);
    }

    #[test]
    fn chain_names_are_valid_and_distinct_per_port() {
        let mut first = port();
        first.affinity_seconds = Some(10);
        let mut s = svc(first);
        let mut second = port();
        second.name = "metrics".into();
        second.port = 9090;
        second.affinity_seconds = Some(10);
        s.ports.push(second);
        let list = vec![ep("10.244.2.2", "node-2", true)];
        let mut by_port = eps(list.clone());
        by_port.insert(("metrics".into(), Protocol::Tcp), list);
        let rules = plan_service(&s, &by_port, &ctx());
        assert_eq!(
            rules.chains.len(),
            4,
            "a Service chain and an endpoint chain per port"
        );
        for name in rules.chains.keys() {
            assert!(name.len() < 256);
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_/.".contains(c)),
                "{name}"
            );
        }
    }

    /// Every chain and set name of `rules`.
    fn names_of(rules: &ServiceRules) -> Vec<String> {
        rules
            .chains
            .keys()
            .chain(rules.sets.keys())
            .cloned()
            .collect()
    }

    fn sticky(namespace: &str, name: &str, port_name: &str) -> ServiceRules {
        let mut p = port();
        p.name = port_name.into();
        p.affinity_seconds = Some(10);
        let info = ServiceInfo {
            key: ServiceKey {
                namespace: namespace.into(),
                name: name.into(),
            },
            ports: vec![p],
            health_check_node_port: None,
            load_balancer_class: None,
            cluster_ip: None,
        };
        let by_port = [(
            (port_name.to_string(), Protocol::Tcp),
            vec![ep("10.244.1.2", "node-1", true)],
        )]
        .into();
        plan_service(&info, &by_port, &ctx())
    }

    #[test]
    fn hostile_names_give_bounded_names_nft_takes_unquoted() {
        let long = "x".repeat(250);
        let hostile = [
            ("demo", "bad name"),
            ("demo", long.as_str()),
            (long.as_str(), long.as_str()),
            ("demo", "a\"; flush ruleset; \""),
            ("demo", "new\nline\ttab"),
            ("démo", "名前"),
            ("demo", "@set $var {}"),
            ("", ""),
        ];
        for (namespace, name) in hostile {
            let rules = sticky(namespace, name, "p q");
            assert_eq!(names_of(&rules).len(), 3, "{name}: svc, sep and aff");
            for n in names_of(&rules) {
                assert!(n.len() <= 128, "{} characters: {n}", n.len());
                assert!(n.starts_with(|c: char| c.is_ascii_alphabetic()), "{n}");
                assert!(
                    n.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_/.".contains(c)),
                    "{n}"
                );
            }
        }
    }

    #[test]
    fn names_that_read_alike_get_distinct_chains() {
        // Each pair reads the same once made safe or joined with '/'.
        let pairs = [
            (("a/b", "c"), ("a", "b/c")),
            (("demo", "bad name"), ("demo", "bad_name")),
            (("demo", &"y".repeat(200)), ("demo", &"y".repeat(201))),
        ];
        for ((ns1, n1), (ns2, n2)) in pairs {
            let first = names_of(&sticky(ns1, n1, "p"));
            let second = names_of(&sticky(ns2, n2, "p"));
            for name in &first {
                assert!(!second.contains(name), "{ns1}/{n1} and {ns2}/{n2}: {name}");
            }
        }
        let a = names_of(&sticky("demo", "web", "a b"));
        let b = names_of(&sticky("demo", "web", "a_b"));
        assert!(a.iter().all(|n| !b.contains(n)), "port names too");
    }
}
