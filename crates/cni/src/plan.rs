//! Pure decisions: from a network configuration (and the node's subnet.env)
//! to the network weft-cni wires — bridge, MTU, range sets, pod routes,
//! masquerade — and the stable names of per-attachment objects. Nothing here
//! touches the kernel; the commands apply what this computes.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use sha2::{Digest, Sha256};
use weft_ipam::{Allocation, HostLocal, Range, RangeSet, SubnetEnv, SubnetEnvError};

use crate::spec::config::{Dns, IpamConf, RangeConf};
use crate::spec::{CniError, NetConf, RouteEntry};

pub const DEFAULT_BRIDGE: &str = "cni0";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/weft";

/// Whether the node's address ranges must be known: ADD, CHECK and STATUS
/// need them; DEL and GC must work even when the subnet file is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranges {
    Required,
    Optional,
}

/// The network as weft-cni will wire it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub ip_masq: bool,
    pub hairpin: bool,
    pub sets: Vec<RangeSet>,
    pub routes: Vec<RouteEntry>,
    pub data_dir: PathBuf,
    pub dns: Option<Dns>,
    /// Destinations never masqueraded (the cluster networks from subnet.env).
    pub cluster_networks: Vec<IpNet>,
    /// Where the agent that must protect a new pod listens.
    pub policy_socket: Option<PathBuf>,
    /// The reservations of the plugin that wired this node's pods before.
    pub host_local: Option<HostLocal>,
}

impl Network {
    pub fn plan(conf: &NetConf, ranges: Ranges) -> Result<Self, CniError> {
        let (_, name) = conf.require_identity()?;
        let ipam = &conf.ipam;
        if let Some(kind) = ipam.kind.as_deref() {
            if !matches!(kind, "host-local" | "weft" | "weft-cni") {
                return Err(CniError::unsupported_field(format!(
                    "ipam.type {kind:?} is not supported: weft-cni has built-in IPAM with host-local \
                     semantics; remove ipam.type or set it to \"host-local\""
                )));
            }
        }
        let bridge = conf.bridge.clone().unwrap_or_else(|| DEFAULT_BRIDGE.into());
        let policy_socket = conf.policy_socket.clone();
        if let Some(path) = policy_socket.as_ref().filter(|p| !p.is_absolute()) {
            return Err(CniError::invalid_config(format!(
                "policySocket {} is not an absolute path: give the agent's socket, e.g. /run/weft/policy.sock",
                path.display()
            )));
        }
        let host_local = ipam.host_local_dir.as_ref().map(|dir| {
            if dir.is_absolute() {
                Ok(HostLocal::new(dir))
            } else {
                Err(CniError::invalid_config(format!(
                    "ipam.hostLocalDir {} is not an absolute path: give host-local's directory of the network, e.g. /var/lib/cni/networks/cbr0",
                    dir.display()
                )))
            }
        });
        let host_local = host_local.transpose()?;
        crate::spec::env::validate_ifname(&bridge)
            .map_err(|e| CniError::invalid_config(e.msg.replace("CNI_IFNAME", "bridge")))?;
        let subnet_env = match (&ipam.subnet_file, ranges) {
            (Some(path), Ranges::Required) => {
                Some(SubnetEnv::read(path).map_err(subnet_env_error)?)
            }
            (Some(path), Ranges::Optional) => SubnetEnv::read(path).ok(),
            (None, _) => None,
        };
        let mtu = conf.mtu.or(subnet_env.as_ref().and_then(|e| e.mtu));
        if let Some(m) = mtu.filter(|m| !(68..=65535).contains(m)) {
            return Err(CniError::invalid_config(format!(
                "mtu {m} is out of range: use 68-65535"
            )));
        }
        let sets = match (ranges, &subnet_env) {
            (Ranges::Required, Some(env)) => sets_from_subnet_env(env)?,
            (Ranges::Required, None) => sets_from_ipam(ipam)?,
            (Ranges::Optional, Some(env)) => sets_from_subnet_env(env).unwrap_or_default(),
            (Ranges::Optional, None) => sets_from_ipam(ipam).unwrap_or_default(),
        };
        let cluster_networks: Vec<IpNet> = subnet_env
            .as_ref()
            .map(|e| e.network.into_iter().chain(e.ipv6_network).collect())
            .unwrap_or_default();
        let mut routes = ipam.routes.clone();
        for net in &cluster_networks {
            if !routes.iter().any(|r| r.dst == *net) {
                routes.push(RouteEntry::to(*net, None));
            }
        }
        // flannel's convention: when the agent masquerades (FLANNEL_IPMASQ=true)
        // the plugin must not do it a second time.
        let ip_masq = conf.ip_masq.unwrap_or_else(|| {
            subnet_env
                .as_ref()
                .and_then(|e| e.ipmasq)
                .is_some_and(|agent| !agent)
        });
        let is_default_gateway = conf.is_default_gateway.unwrap_or(true);
        Ok(Network {
            name: name.to_string(),
            bridge,
            mtu,
            is_gateway: conf.is_gateway.unwrap_or(true) || is_default_gateway,
            is_default_gateway,
            ip_masq,
            hairpin: conf.hairpin_mode.unwrap_or(true),
            sets,
            routes,
            data_dir: ipam
                .data_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            dns: conf.dns.clone(),
            cluster_networks,
            policy_socket,
            host_local,
        })
    }

    /// The pod subnets (one per range set's first range) — what counts as
    /// "inside the pod network" for masquerading.
    pub fn pod_subnets(&self) -> Vec<IpNet> {
        let mut nets: Vec<IpNet> = self
            .sets
            .iter()
            .flat_map(|s| s.ranges().iter().map(|r| r.subnet))
            .collect();
        nets.dedup();
        nets
    }

    /// Routes inside the pod: the default route via each family's gateway
    /// (when `isDefaultGateway`), then the configured routes; a route
    /// without `gw` goes via its family's gateway.
    pub fn pod_routes(&self, allocations: &[Allocation]) -> Vec<RouteEntry> {
        let gateway_of = |v6: bool| {
            allocations
                .iter()
                .find(|a| a.address.addr().is_ipv6() == v6)
                .and_then(|a| a.gateway)
        };
        let mut routes: Vec<RouteEntry> = Vec::new();
        if self.is_default_gateway {
            for a in allocations {
                if let Some(gw) = a.gateway {
                    let any: IpNet = if gw.is_ipv6() { "::/0" } else { "0.0.0.0/0" }
                        .parse()
                        .expect("constant network");
                    routes.push(RouteEntry::to(any, Some(gw)));
                }
            }
        }
        for r in &self.routes {
            let v6 = r.dst.addr().is_ipv6();
            if !allocations.iter().any(|a| a.address.addr().is_ipv6() == v6) {
                continue; // no address of that family: the route cannot apply
            }
            let mut r = r.clone();
            r.gw = r.gw.or(gateway_of(v6));
            if !routes
                .iter()
                .any(|have| have.dst == r.dst && have.table == r.table)
            {
                routes.push(r);
            }
        }
        routes
    }

    /// The bridge's addresses: each range's gateway with the subnet's prefix.
    pub fn gateway_addresses(&self, allocations: &[Allocation]) -> Vec<IpNet> {
        if !self.is_gateway {
            return Vec::new();
        }
        allocations
            .iter()
            .filter_map(|a| {
                a.gateway
                    .and_then(|gw| IpNet::new(gw, a.address.prefix_len()).ok())
            })
            .collect()
    }
}

fn subnet_env_error(e: SubnetEnvError) -> CniError {
    match e {
        SubnetEnvError::Missing { .. } => CniError::try_again(e.to_string()),
        SubnetEnvError::Read { .. } => CniError::io(e.to_string()),
        _ => CniError::invalid_config(e.to_string()),
    }
}

fn range_error(field: String) -> impl FnOnce(weft_ipam::RangeError) -> CniError {
    move |e| CniError::invalid_config(format!("{field}: {e}"))
}

fn sets_from_ipam(ipam: &IpamConf) -> Result<Vec<RangeSet>, CniError> {
    let mut confs: Vec<Vec<RangeConf>> = ipam.ranges.clone();
    if let Some(subnet) = ipam.subnet {
        confs.insert(
            0,
            vec![RangeConf {
                subnet,
                range_start: ipam.range_start,
                range_end: ipam.range_end,
                gateway: ipam.gateway,
            }],
        );
    }
    if confs.is_empty() {
        return Err(CniError::invalid_config(
            "ipam has no addresses to hand out: set ipam.ranges, ipam.subnet or ipam.subnetFile",
        ));
    }
    let mut sets = Vec::with_capacity(confs.len());
    // The single-range form, when given, is set 0; `ranges` follow it.
    let legacy = usize::from(ipam.subnet.is_some());
    let field = |i: usize, j: Option<usize>| match (i.checked_sub(legacy), j) {
        (None, _) => "ipam (subnet, rangeStart, rangeEnd, gateway)".to_string(),
        (Some(i), Some(j)) => format!("ipam.ranges[{i}][{j}]"),
        (Some(i), None) => format!("ipam.ranges[{i}]"),
    };
    for (i, set) in confs.iter().enumerate() {
        let mut ranges = Vec::with_capacity(set.len());
        for (j, rc) in set.iter().enumerate() {
            let range = Range::new(rc.subnet, rc.range_start, rc.range_end, rc.gateway)
                .map_err(range_error(field(i, Some(j))))?;
            ranges.push(range);
        }
        sets.push(RangeSet::new(ranges).map_err(range_error(field(i, None)))?);
    }
    RangeSet::check_disjoint(&sets).map_err(range_error("ipam.ranges".into()))?;
    Ok(sets)
}

fn sets_from_subnet_env(env: &SubnetEnv) -> Result<Vec<RangeSet>, CniError> {
    let mut sets = Vec::new();
    for (key, subnet) in [
        ("FLANNEL_SUBNET", env.subnet),
        ("FLANNEL_IPV6_SUBNET", env.ipv6_subnet),
    ] {
        let Some(subnet) = subnet else { continue };
        // flannel writes the gateway with the prefix, e.g. 10.244.1.1/24.
        let gateway: Option<IpAddr> = (subnet.addr() != subnet.network()).then_some(subnet.addr());
        let range = Range::new(subnet.trunc(), None, None, gateway)
            .map_err(range_error(format!("subnet file {key}")))?;
        sets.push(RangeSet::new(vec![range]).map_err(range_error(format!("subnet file {key}")))?);
    }
    Ok(sets)
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..13]
        .to_string()
}

/// Host-side veth name: stable per (container, interface), 15 bytes.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    format!("wv{}", short_hash(&[container_id, ifname]))
}

/// The bridge's MAC: stable per bridge name, locally administered, unicast.
pub fn bridge_mac(bridge: &str) -> Vec<u8> {
    let h = short_hash(&["bridge", bridge]);
    let mut mac: Vec<u8> = (0..6)
        .map(|i| u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).unwrap_or(0))
        .collect();
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// Whether a link name has the shape of a weft-cni host veth.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == 15 && name.starts_with("wv") && name[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// The name a host veth (and its pod end) takes when DEL retires it while
/// the kernel unregisters it in the background; `nonce` keeps it unique.
pub fn retired_link_name(container_id: &str, ifname: &str, nonce: &str) -> String {
    format!("wr{}", short_hash(&[container_id, ifname, nonce]))
}

/// Whether a link name has the shape of a retired weft-cni veth.
pub fn is_retired_link_name(name: &str) -> bool {
    name.len() == 15 && name.starts_with("wr") && name[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// The prefix of every hostPort chain of one network, so that GC of one
/// network never touches another's.
pub fn hostport_chain_prefix(network: &str) -> String {
    format!("hp-{}-", &short_hash(&[network])[..6])
}

/// The nftables chain holding one attachment's hostPort DNAT rules.
pub fn hostport_chain(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "{}{}",
        hostport_chain_prefix(network),
        short_hash(&[container_id, ifname])
    )
}

/// A per-network chain name (masquerade, hairpin SNAT), changing with `what`
/// so a changed rule set gets a new chain rather than an edited one.
pub fn network_chain(prefix: &str, network: &str, what: &[IpNet]) -> String {
    let nets: Vec<String> = what.iter().map(IpNet::to_string).collect();
    let mut parts: Vec<&str> = vec![network];
    parts.extend(nets.iter().map(String::as_str));
    format!("{prefix}-{}", short_hash(&parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ErrorCode;

    fn conf(json: &str) -> NetConf {
        NetConf::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn defaults_and_dual_stack() {
        let n = Network::plan(
            &conf(
                r#"{"cniVersion":"1.1.0","name":"pods","type":"weft-cni",
              "ipam":{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00:1::/64"}]],
                      "routes":[{"dst":"192.168.0.0/16"}]}}"#,
            ),
            Ranges::Required,
        )
        .unwrap();
        assert_eq!(n.bridge, "cni0");
        assert!(n.is_gateway && n.is_default_gateway && n.hairpin && !n.ip_masq);
        assert_eq!(n.sets.len(), 2);
        let allocs = weft_ipam::allocate(&n.sets, &[], &[None, None], |_| false).unwrap();
        let routes = n.pod_routes(&allocs);
        let shown: Vec<String> = routes
            .iter()
            .map(|r| format!("{} {:?}", r.dst, r.gw.map(|g| g.to_string())))
            .collect();
        assert_eq!(
            shown,
            [
                "0.0.0.0/0 Some(\"10.1.0.1\")",
                "::/0 Some(\"fd00:1::1\")",
                "192.168.0.0/16 Some(\"10.1.0.1\")",
            ]
        );
        assert_eq!(n.gateway_addresses(&allocs).len(), 2);
    }

    #[test]
    fn subnet_file_supplies_subnet_mtu_and_masquerade_choice() {
        let dir = std::env::temp_dir().join(format!("weft-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("subnet.env");
        std::fs::write(&file, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
        let c = conf(&format!(
            r#"{{"cniVersion":"1.0.0","name":"pods","type":"weft-cni","ipam":{{"subnetFile":"{}"}}}}"#,
            file.display()
        ));
        let n = Network::plan(&c, Ranges::Required).unwrap();
        assert_eq!(n.mtu, Some(1450));
        assert!(!n.ip_masq, "agent masquerades, plugin must not");
        assert_eq!(n.sets[0].ranges()[0].subnet.to_string(), "10.244.3.0/24");
        assert_eq!(
            n.sets[0].ranges()[0].gateway,
            Some("10.244.3.1".parse().unwrap())
        );
        assert_eq!(n.cluster_networks.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
        // Gone: ADD must be told to try again later, DEL must still work.
        assert_eq!(
            Network::plan(&c, Ranges::Required).unwrap_err().code,
            ErrorCode::TryAgainLater
        );
        assert!(Network::plan(&c, Ranges::Optional).is_ok());
    }

    #[test]
    fn invalid_configs_name_the_problem() {
        let cases = [
            (
                r#""ipam":{"type":"dhcp"}"#,
                ErrorCode::UnsupportedField,
                "ipam.type",
            ),
            (
                r#""ipam":{}"#,
                ErrorCode::InvalidConfig,
                "ipam has no addresses",
            ),
            (
                r#""mtu":20,"ipam":{"subnet":"10.0.0.0/24"}"#,
                ErrorCode::InvalidConfig,
                "mtu 20",
            ),
            (
                r#""bridge":"a very bad name","ipam":{"subnet":"10.0.0.0/24"}"#,
                ErrorCode::InvalidConfig,
                "bridge",
            ),
            (
                r#""ipam":{"ranges":[[{"subnet":"10.0.0.1/24"}]]}"#,
                ErrorCode::InvalidConfig,
                "ipam.ranges[0][0]",
            ),
            (
                r#""ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]}"#,
                ErrorCode::InvalidConfig,
                "overlap",
            ),
        ];
        for (extra, code, needle) in cases {
            let c = conf(&format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"weft-cni",{extra}}}"#
            ));
            let err = Network::plan(&c, Ranges::Required).unwrap_err();
            assert_eq!(err.code, code, "{extra}");
            assert!(err.msg.contains(needle), "{extra}: {}", err.msg);
        }
    }

    #[test]
    fn names_are_stable_short_and_recognisable() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_eq!(a.len(), 15);
        assert!(is_host_veth_name(&a));
        assert!(!is_host_veth_name("veth1234"));
        let retired = retired_link_name("abc", "eth0", "1");
        assert!(is_retired_link_name(&retired) && !is_host_veth_name(&retired));
        assert_ne!(retired, retired_link_name("abc", "eth0", "2"));
        let mac = bridge_mac("cni0");
        assert_eq!(mac, bridge_mac("cni0"));
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        assert!(hostport_chain("net", "abc", "eth0").starts_with(&hostport_chain_prefix("net")));
        assert_ne!(hostport_chain_prefix("a"), hostport_chain_prefix("b"));
    }
}
