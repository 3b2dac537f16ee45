//! flannel's `net-conf.json`: parsing it and checking it, with flannel's defaults
//! filled in.
//!
//! This module owns the cluster-wide network configuration: which address
//! families are enabled, each family's pod network and the range of node
//! subnets it hands out, and the backend (vxlan or host-gw). It turns the JSON
//! that flannel users already have into a [`NetConf`] that the rest of the
//! agent can trust without checking again.
//!
//! It must stay pure: apart from [`NetConf::read`] reading the file, there is
//! no I/O, no kernel access and no logging here. Every error names the field
//! at fault and says how to fix it, because the person reading it is editing
//! a ConfigMap.
//!
//! Where flannel's behaviour is kept on purpose:
//! - the default `SubnetLen` is 24 (64 for IPv6) when the network can hold
//!   four such subnets, otherwise the network prefix + 2, and any network has
//!   to hold at least four subnets (flannel never hands out the first one);
//! - `SubnetMin` defaults to the second subnet and `SubnetMax` to the last;
//! - a `SubnetLen` of 0 means "not set", as Go's zero value does in flannel.
//!
//! Where weft is stricter or different: a network with host bits set is an
//! error rather than silently masked, `EnableIPv4` defaults to whether
//! `Network` is present (so an IPv6-only file needs no `"EnableIPv4": false`),
//! a missing `Backend` means vxlan rather than udp, and udp is not available.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// The validated configuration: at least one of `ipv4` and `ipv6` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub ipv4: Option<Family>,
    pub ipv6: Option<Family>,
    pub backend: Backend,
}

/// One address family's pod network and the node subnets it hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// The whole pod network, without host bits.
    pub network: IpNet,
    /// The prefix length of every node subnet.
    pub subnet_len: u8,
    /// The first node subnet that may be handed out (prefix `subnet_len`).
    pub subnet_min: IpNet,
    /// The last node subnet that may be handed out (prefix `subnet_len`).
    pub subnet_max: IpNet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Vxlan {
        vni: u32,
        port: u16,
        gbp: bool,
        direct_routing: bool,
        /// `None`: derive it from the node's interface.
        mtu: Option<u32>,
    },
    HostGw {
        /// `None`: derive it from the node's interface.
        mtu: Option<u32>,
    },
}

impl Backend {
    /// The name as written in `Backend.Type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan { .. } => "vxlan",
            Backend::HostGw { .. } => "host-gw",
        }
    }
}

/// The name of the vxlan device for `vni`. The longest, `weft.16777215`, is
/// 13 bytes: within Linux's 15-byte limit on interface names.
pub fn vxlan_device_name(vni: u32) -> String {
    format!("weft.{vni}")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read net-conf.json at {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not JSON, or a field of the wrong type; the message starts with the
    /// field's path (e.g. `Backend.VNI`) when serde knows it.
    #[error("net-conf.json: {0}")]
    Json(String),
    #[error("net-conf.json: {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl NetConf {
    pub fn parse(json: &str) -> Result<NetConf, ConfigError> {
        deserialize(json)?.validate()
    }

    pub fn read(path: &Path) -> Result<NetConf, ConfigError> {
        let json = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&json)
    }
}

impl NetConf {
    /// Refuses a pod network that holds one of the node's own addresses
    /// (`addrs`, those of `iface`): pods would be handed addresses the node
    /// network already uses.
    pub fn check_node_addresses(&self, iface: &str, addrs: &[IpAddr]) -> Result<(), ConfigError> {
        let families = [(&self.ipv4, &IPV4), (&self.ipv6, &IPV6)];
        for (family, f) in families {
            let Some(family) = family else { continue };
            if let Some(addr) = addrs.iter().find(|a| family.network.contains(*a)) {
                return Err(invalid(
                    f.network,
                    format!(
                        "{} contains {addr}, an address of this node's interface {iface} \
                         (--iface): pods would get addresses of the node network; choose a \
                         {} that no node address is in",
                        family.network, f.network
                    ),
                ));
            }
        }
        Ok(())
    }
}

const DEFAULT_VNI: u64 = 1;
/// The Linux kernel's vxlan port, which flannel uses too (not IANA's 4789).
const DEFAULT_VXLAN_PORT: u64 = 8472;
const MAX_VNI: u64 = (1 << 24) - 1;
/// 68 is the smallest MTU IPv4 allows (RFC 791); 65535 the largest IP packet.
const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

/// The file as written. Fields are optional so that validation can tell
/// "absent" from "set" and fill in flannel's defaults; unknown fields (such
/// as flannel's `EnableNFTables`) are ignored.
#[derive(Debug, Deserialize)]
struct RawNetConf {
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
    #[serde(rename = "Network")]
    network: Option<IpNet>,
    #[serde(rename = "SubnetLen")]
    subnet_len: Option<u64>,
    #[serde(rename = "SubnetMin")]
    subnet_min: Option<IpAddr>,
    #[serde(rename = "SubnetMax")]
    subnet_max: Option<IpAddr>,
    #[serde(rename = "IPv6Network")]
    ipv6_network: Option<IpNet>,
    #[serde(rename = "IPv6SubnetLen")]
    ipv6_subnet_len: Option<u64>,
    #[serde(rename = "IPv6SubnetMin")]
    ipv6_subnet_min: Option<IpAddr>,
    #[serde(rename = "IPv6SubnetMax")]
    ipv6_subnet_max: Option<IpAddr>,
    #[serde(rename = "Backend")]
    backend: Option<RawBackend>,
}

/// Numbers are read as u64 so that out-of-range values get our message
/// (naming the range) rather than serde's.
#[derive(Debug, Default, Deserialize)]
struct RawBackend {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "VNI")]
    vni: Option<u64>,
    #[serde(rename = "Port")]
    port: Option<u64>,
    #[serde(rename = "GBP")]
    gbp: Option<bool>,
    #[serde(rename = "DirectRouting")]
    direct_routing: Option<bool>,
    #[serde(rename = "MTU")]
    mtu: Option<u64>,
}

/// One family's fields as written.
struct RawFamily {
    network: Option<IpNet>,
    subnet_len: Option<u64>,
    subnet_min: Option<IpAddr>,
    subnet_max: Option<IpAddr>,
}

/// What differs between the IPv4 and IPv6 halves of the file: field names
/// for messages, and flannel's limits.
struct Fields {
    v4: bool,
    name: &'static str,
    enable: &'static str,
    network: &'static str,
    subnet_len: &'static str,
    subnet_min: &'static str,
    subnet_max: &'static str,
    other_name: &'static str,
    other_network: &'static str,
    example: &'static str,
    /// Leaves room for at least two addresses per node (e.g. /30).
    max_subnet_len: u8,
    default_subnet_len: u8,
    /// Blocks a pod network must not overlap.
    reserved: &'static [Reserved],
}

/// An address block that is not unicast routable between nodes, so pods
/// cannot be given addresses in it (the kernel refuses some outright, as
/// multicast on a bridge, and routes others to itself, as loopback).
struct Reserved {
    block: IpNet,
    purpose: &'static str,
}

const fn reserved(addr: IpAddr, prefix_len: u8, purpose: &'static str) -> Reserved {
    Reserved {
        block: IpNet::new_assert(addr, prefix_len),
        purpose,
    }
}

const fn v4(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, 0, 0))
}

const fn v6(segments: [u16; 8]) -> IpAddr {
    let [a, b, c, d, e, f, g, h] = segments;
    IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
}

const RESERVED_V4: &[Reserved] = &[
    reserved(v4(0, 0), 8, "the \"this\" network (RFC 1122)"),
    reserved(v4(127, 0), 8, "reserved for loopback"),
    reserved(v4(169, 254), 16, "reserved for link-local addresses"),
    reserved(v4(224, 0), 4, "reserved for multicast"),
    reserved(v4(240, 0), 4, "reserved for future use (and broadcast)"),
];

const RESERVED_V6: &[Reserved] = &[
    reserved(v6([0; 8]), 128, "the unspecified address"),
    reserved(v6([0, 0, 0, 0, 0, 0, 0, 1]), 128, "the loopback address"),
    reserved(
        v6([0, 0, 0, 0, 0, 0xffff, 0, 0]),
        96,
        "reserved for IPv4-mapped addresses",
    ),
    reserved(
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]),
        10,
        "reserved for link-local addresses",
    ),
    reserved(
        v6([0xff00, 0, 0, 0, 0, 0, 0, 0]),
        8,
        "reserved for multicast",
    ),
];

const IPV4: Fields = Fields {
    v4: true,
    name: "IPv4",
    enable: "EnableIPv4",
    network: "Network",
    subnet_len: "SubnetLen",
    subnet_min: "SubnetMin",
    subnet_max: "SubnetMax",
    other_name: "IPv6",
    other_network: "IPv6Network",
    example: "10.244.0.0/16",
    max_subnet_len: 30,
    default_subnet_len: 24,
    reserved: RESERVED_V4,
};

const IPV6: Fields = Fields {
    v4: false,
    name: "IPv6",
    enable: "EnableIPv6",
    network: "IPv6Network",
    subnet_len: "IPv6SubnetLen",
    subnet_min: "IPv6SubnetMin",
    subnet_max: "IPv6SubnetMax",
    other_name: "IPv4",
    other_network: "Network",
    example: "fd00:10:244::/56",
    max_subnet_len: 126,
    default_subnet_len: 64,
    reserved: RESERVED_V6,
};

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Deserializes through serde_path_to_error so that type errors say which
/// field they are about (`Backend.VNI: invalid type: ...`).
fn deserialize(json: &str) -> Result<RawNetConf, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(json);
    let raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." => ConfigError::Json(inner.to_string()),
            _ => ConfigError::Json(format!("{path}: {inner}")),
        }
    })?;
    // Trailing garbage after the object is an error, as in serde_json::from_str.
    de.end().map_err(|e| ConfigError::Json(e.to_string()))?;
    Ok(raw)
}

impl RawNetConf {
    fn validate(self) -> Result<NetConf, ConfigError> {
        let enable_ipv4 = self.enable_ipv4.unwrap_or(self.network.is_some());
        let enable_ipv6 = self.enable_ipv6.unwrap_or(false);
        if !enable_ipv4 && !enable_ipv6 {
            return Err(self.nothing_enabled());
        }
        let ipv4 = RawFamily {
            network: self.network,
            subnet_len: self.subnet_len,
            subnet_min: self.subnet_min,
            subnet_max: self.subnet_max,
        };
        let ipv6 = RawFamily {
            network: self.ipv6_network,
            subnet_len: self.ipv6_subnet_len,
            subnet_min: self.ipv6_subnet_min,
            subnet_max: self.ipv6_subnet_max,
        };
        Ok(NetConf {
            ipv4: enable_ipv4.then(|| family(ipv4, &IPV4)).transpose()?,
            ipv6: enable_ipv6.then(|| family(ipv6, &IPV6)).transpose()?,
            backend: backend(self.backend.unwrap_or_default())?,
        })
    }

    /// Blames what the user most likely forgot: an explicit
    /// `"EnableIPv4": false` was meant, otherwise `Network` is missing.
    fn nothing_enabled(&self) -> ConfigError {
        if self.enable_ipv4 == Some(false) {
            invalid(
                "EnableIPv4",
                "false, and EnableIPv6 is false too: enable at least one address family",
            )
        } else {
            invalid(
                "Network",
                format!(
                    "is missing: set it to the pod network (e.g. \"{}\"), or set EnableIPv6 \
                     and IPv6Network for an IPv6-only cluster",
                    IPV4.example
                ),
            )
        }
    }
}

fn family(raw: RawFamily, f: &Fields) -> Result<Family, ConfigError> {
    let network = network(raw.network, f)?;
    let subnet_len = subnet_len(raw.subnet_len, &network, f)?;
    // The first two subnets make up the block one bit shorter at the start
    // of the network, so the second subnet holds that block's last address.
    let first_two = subnet_at(network.addr(), subnet_len - 1, f)?;
    let default_min = subnet_at(first_two.broadcast(), subnet_len, f)?;
    let default_max = subnet_at(network.broadcast(), subnet_len, f)?;
    let subnet_min = bound(
        raw.subnet_min,
        default_min,
        f.subnet_min,
        &network,
        subnet_len,
        f,
    )?;
    let subnet_max = bound(
        raw.subnet_max,
        default_max,
        f.subnet_max,
        &network,
        subnet_len,
        f,
    )?;
    if subnet_min.addr() > subnet_max.addr() {
        return Err(invalid(
            f.subnet_min,
            format!(
                "{} is after {} {}: {} must not be greater than {}",
                subnet_min.addr(),
                f.subnet_max,
                subnet_max.addr(),
                f.subnet_min,
                f.subnet_max
            ),
        ));
    }
    Ok(Family {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

fn network(given: Option<IpNet>, f: &Fields) -> Result<IpNet, ConfigError> {
    let Some(network) = given else {
        return Err(invalid(
            f.network,
            format!(
                "is missing although {} is true: set it (e.g. \"{}\") or set {} to false",
                f.enable, f.example, f.enable
            ),
        ));
    };
    if matches!(network, IpNet::V4(_)) != f.v4 {
        return Err(invalid(
            f.network,
            format!(
                "{network} is not an {} network (the {} network goes in {})",
                f.name, f.other_name, f.other_network
            ),
        ));
    }
    if network.trunc() != network {
        return Err(invalid(
            f.network,
            format!("{network} has host bits set (use {})", network.trunc()),
        ));
    }
    let overlaps = |r: &&Reserved| network.contains(&r.block) || r.block.contains(&network);
    if let Some(r) = f.reserved.iter().find(overlaps) {
        return Err(invalid(
            f.network,
            format!(
                "{network} overlaps {}, {}: pods need unicast addresses that nodes route \
                 to each other; use a private range such as {}",
                r.block, r.purpose, f.example
            ),
        ));
    }
    Ok(network)
}

/// flannel's rule: the network must hold at least four subnets, because the
/// first one is never handed out and two would leave a single node.
fn subnet_len(given: Option<u64>, network: &IpNet, f: &Fields) -> Result<u8, ConfigError> {
    let prefix = network.prefix_len();
    let shortest = prefix + 2;
    if shortest > f.max_subnet_len {
        return Err(invalid(
            f.network,
            format!(
                "{network} is too small: its prefix must be /{} or shorter, to hold at least \
                 four /{} node subnets",
                f.max_subnet_len - 2,
                f.max_subnet_len
            ),
        ));
    }
    // Go's zero value: flannel treats `"SubnetLen": 0` as not set.
    match given.filter(|&len| len != 0) {
        None if shortest <= f.default_subnet_len => Ok(f.default_subnet_len),
        None => Ok(shortest),
        Some(len) if len > u64::from(f.max_subnet_len) => Err(invalid(
            f.subnet_len,
            format!(
                "{len} is out of range: use a value from {shortest} to {}",
                f.max_subnet_len
            ),
        )),
        Some(len) if len < u64::from(shortest) => Err(too_small_for(network, len, shortest, f)),
        // In range, so at most 126: the cast cannot truncate.
        Some(len) => Ok(len as u8),
    }
}

fn too_small_for(network: &IpNet, len: u64, shortest: u8, f: &Fields) -> ConfigError {
    let shorter_network = match len.checked_sub(2) {
        Some(prefix) => format!(", or a {} with a prefix of /{prefix} or shorter", f.network),
        None => String::new(),
    };
    invalid(
        f.network,
        format!(
            "{network} is too small for {} {len}: it must hold at least four subnets \
             (use a {} of at least {shortest}{shorter_network})",
            f.subnet_len, f.subnet_len
        ),
    )
}

/// `SubnetMin` or `SubnetMax`: the default, or the given address if it is
/// the start of a subnet inside the network.
fn bound(
    given: Option<IpAddr>,
    default: IpNet,
    field: &'static str,
    network: &IpNet,
    subnet_len: u8,
    f: &Fields,
) -> Result<IpNet, ConfigError> {
    let Some(addr) = given else {
        return Ok(default);
    };
    // Also catches an address of the other family.
    if !network.contains(&addr) {
        return Err(invalid(
            field,
            format!("{addr} is outside {} {network}", f.network),
        ));
    }
    let subnet = subnet_at(addr, subnet_len, f)?;
    if subnet.addr() != addr {
        return Err(invalid(
            field,
            format!(
                "{addr} is not aligned to {} {subnet_len} (use {})",
                f.subnet_len,
                subnet.addr()
            ),
        ));
    }
    Ok(subnet)
}

/// The subnet of length `len` that contains `addr`. `len` has been checked
/// against the family by the time this is called, so the error is only a
/// guard.
fn subnet_at(addr: IpAddr, len: u8, f: &Fields) -> Result<IpNet, ConfigError> {
    IpNet::new(addr, len).map(|net| net.trunc()).map_err(|_| {
        invalid(
            f.subnet_len,
            format!("/{len} is not a valid prefix for {addr}"),
        )
    })
}

fn backend(raw: RawBackend) -> Result<Backend, ConfigError> {
    let mtu = raw.mtu.map(mtu).transpose()?;
    match raw.kind.as_deref().unwrap_or("vxlan") {
        "vxlan" => Ok(Backend::Vxlan {
            vni: vni(raw.vni.unwrap_or(DEFAULT_VNI))?,
            port: port(raw.port.unwrap_or(DEFAULT_VXLAN_PORT))?,
            gbp: raw.gbp.unwrap_or(false),
            direct_routing: raw.direct_routing.unwrap_or(false),
            mtu,
        }),
        "host-gw" => Ok(Backend::HostGw { mtu }),
        "udp" => Err(invalid(
            "Backend.Type",
            "\"udp\" is not implemented in weft yet: use vxlan or host-gw",
        )),
        other => Err(invalid(
            "Backend.Type",
            format!("{other:?} is unknown: use vxlan or host-gw"),
        )),
    }
}

fn vni(vni: u64) -> Result<u32, ConfigError> {
    match u32::try_from(vni) {
        Ok(vni) if (1..=MAX_VNI).contains(&u64::from(vni)) => Ok(vni),
        _ => Err(invalid(
            "Backend.VNI",
            format!("{vni} is out of range (1..={MAX_VNI})"),
        )),
    }
}

fn port(port: u64) -> Result<u16, ConfigError> {
    match u16::try_from(port) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(invalid(
            "Backend.Port",
            format!("{port} is out of range (1..=65535; vxlan's default is {DEFAULT_VXLAN_PORT})"),
        )),
    }
}

fn mtu(mtu: u64) -> Result<u32, ConfigError> {
    match u32::try_from(mtu) {
        Ok(mtu) if MTU_RANGE.contains(&u64::from(mtu)) => Ok(mtu),
        _ => Err(invalid(
            "Backend.MTU",
            format!(
                "{mtu} is out of range ({}..={}; leave it out to use the interface's MTU)",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn parse(json: &str) -> NetConf {
        NetConf::parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    /// Asserts that `json` is rejected for `field`, with a message containing
    /// each of `words`; returns the displayed error.
    fn rejected(json: &str, field: &str, words: &[&str]) -> String {
        let err = NetConf::parse(json).expect_err(json);
        let ConfigError::Invalid { field: got, .. } = &err else {
            panic!("{json}: expected Invalid, got {err:?}");
        };
        assert_eq!(*got, field, "{json}: {err}");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("net-conf.json: {field}: ")),
            "{shown}"
        );
        for word in words {
            assert!(shown.contains(word), "{shown:?} lacks {word:?}");
        }
        shown
    }

    fn json_error(json: &str) -> String {
        match NetConf::parse(json) {
            Err(ConfigError::Json(message)) => message,
            other => panic!("{json}: expected Json error, got {other:?}"),
        }
    }

    fn ipv4(conf: &NetConf) -> &Family {
        conf.ipv4.as_ref().expect("IPv4 enabled")
    }

    fn ipv6(conf: &NetConf) -> &Family {
        conf.ipv6.as_ref().expect("IPv6 enabled")
    }

    const DEFAULT_BACKEND: Backend = Backend::Vxlan {
        vni: 1,
        port: 8472,
        gbp: false,
        direct_routing: false,
        mtu: None,
    };

    // ---- defaults ----

    #[test]
    fn network_alone_gets_flannel_defaults() {
        let conf = parse(r#"{"Network": "10.244.0.0/16"}"#);
        assert_eq!(
            conf,
            NetConf {
                ipv4: Some(Family {
                    network: net("10.244.0.0/16"),
                    subnet_len: 24,
                    subnet_min: net("10.244.1.0/24"),
                    subnet_max: net("10.244.255.0/24"),
                }),
                ipv6: None,
                backend: DEFAULT_BACKEND,
            }
        );
    }

    #[test]
    fn kube_flannel_manifest_config_parses() {
        // As shipped in kube-flannel.yml, including a field weft ignores.
        let conf = parse(
            r#"{
              "Network": "10.244.0.0/16",
              "EnableNFTables": false,
              "Backend": { "Type": "vxlan" }
            }"#,
        );
        assert_eq!(ipv4(&conf).subnet_len, 24);
        assert_eq!(conf.backend, DEFAULT_BACKEND);
    }

    #[test]
    fn full_dual_stack_example_parses() {
        let conf = parse(
            r#"{ "Network": "10.244.0.0/16", "SubnetLen": 24,
                 "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.250.0",
                 "EnableIPv4": true, "EnableIPv6": true,
                 "IPv6Network": "fd00:10:244::/56", "IPv6SubnetLen": 64,
                 "IPv6SubnetMin": "fd00:10:244:2::", "IPv6SubnetMax": "fd00:10:244:f0::",
                 "Backend": { "Type": "vxlan", "VNI": 4096, "Port": 4789, "GBP": true,
                              "DirectRouting": true, "MTU": 1450 } }"#,
        );
        assert_eq!(
            conf,
            NetConf {
                ipv4: Some(Family {
                    network: net("10.244.0.0/16"),
                    subnet_len: 24,
                    subnet_min: net("10.244.1.0/24"),
                    subnet_max: net("10.244.250.0/24"),
                }),
                ipv6: Some(Family {
                    network: net("fd00:10:244::/56"),
                    subnet_len: 64,
                    subnet_min: net("fd00:10:244:2::/64"),
                    subnet_max: net("fd00:10:244:f0::/64"),
                }),
                backend: Backend::Vxlan {
                    vni: 4096,
                    port: 4789,
                    gbp: true,
                    direct_routing: true,
                    mtu: Some(1450),
                },
            }
        );
    }

    #[test]
    fn ipv6_defaults() {
        let conf = parse(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}"#,
        );
        assert_eq!(
            ipv6(&conf),
            &Family {
                network: net("fd00:10:244::/56"),
                subnet_len: 64,
                subnet_min: net("fd00:10:244:1::/64"),
                subnet_max: net("fd00:10:244:ff::/64"),
            }
        );
    }

    #[test]
    fn ipv6_only_needs_no_enable_ipv4_false() {
        let conf = parse(r#"{"EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}"#);
        assert_eq!(conf.ipv4, None);
        assert_eq!(ipv6(&conf).network, net("fd00:10:244::/56"));
    }

    #[test]
    fn disabled_families_are_ignored_even_when_configured() {
        let conf = parse(
            r#"{"EnableIPv4": false, "Network": "10.244.0.0/16",
                "EnableIPv6": true, "IPv6Network": "fd00::/56"}"#,
        );
        assert_eq!(conf.ipv4, None);
        assert!(conf.ipv6.is_some());
        // IPv6Network without EnableIPv6, as flannel: IPv6 stays off.
        let conf = parse(r#"{"Network": "10.244.0.0/16", "IPv6Network": "fd00::/56"}"#);
        assert_eq!(conf.ipv6, None);
    }

    #[test]
    fn default_subnet_len_shrinks_for_small_networks_as_flannel() {
        for (network, len, min, max) in [
            ("10.0.0.0/8", 24, "10.0.1.0/24", "10.255.255.0/24"),
            ("10.244.0.0/22", 24, "10.244.1.0/24", "10.244.3.0/24"),
            ("10.244.0.0/23", 25, "10.244.0.128/25", "10.244.1.128/25"),
            ("10.244.0.0/28", 30, "10.244.0.4/30", "10.244.0.12/30"),
        ] {
            let conf = parse(&format!(r#"{{"Network": "{network}"}}"#));
            let family = ipv4(&conf);
            assert_eq!(family.subnet_len, len, "{network}");
            assert_eq!(family.subnet_min, net(min), "{network}");
            assert_eq!(family.subnet_max, net(max), "{network}");
        }
        for (network, len) in [
            ("fd00::/48", 64),
            ("fd00::/62", 64),
            ("fd00::/63", 65),
            ("fd00::/124", 126),
        ] {
            let conf = parse(&format!(
                r#"{{"EnableIPv6": true, "IPv6Network": "{network}"}}"#
            ));
            assert_eq!(ipv6(&conf).subnet_len, len, "{network}");
        }
    }

    #[test]
    fn explicit_subnet_len_and_zero_meaning_unset() {
        let conf = parse(r#"{"Network": "10.244.0.0/16", "SubnetLen": 26}"#);
        assert_eq!(ipv4(&conf).subnet_len, 26);
        assert_eq!(ipv4(&conf).subnet_min, net("10.244.0.64/26"));
        assert_eq!(ipv4(&conf).subnet_max, net("10.244.255.192/26"));
        // The smallest network for a length: exactly four subnets.
        let conf = parse(r#"{"Network": "10.244.0.0/16", "SubnetLen": 18}"#);
        assert_eq!(ipv4(&conf).subnet_min, net("10.244.64.0/18"));
        let conf = parse(r#"{"Network": "10.244.0.0/16", "SubnetLen": 30}"#);
        assert_eq!(ipv4(&conf).subnet_max, net("10.244.255.252/30"));
        let conf = parse(r#"{"Network": "10.244.0.0/16", "SubnetLen": 0}"#);
        assert_eq!(ipv4(&conf).subnet_len, 24);
    }

    #[test]
    fn explicit_bounds_on_subnet_edges_are_kept() {
        let conf = parse(
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.0.0", "SubnetMax": "10.244.0.0"}"#,
        );
        assert_eq!(ipv4(&conf).subnet_min, net("10.244.0.0/24"));
        assert_eq!(ipv4(&conf).subnet_max, net("10.244.0.0/24"));
    }

    #[test]
    fn null_means_absent() {
        let conf = parse(r#"{"Network": "10.244.0.0/16", "SubnetLen": null, "Backend": null}"#);
        assert_eq!(ipv4(&conf).subnet_len, 24);
        assert_eq!(conf.backend, DEFAULT_BACKEND);
    }

    // ---- backends ----

    #[test]
    fn backend_defaults_to_vxlan() {
        assert_eq!(
            parse(r#"{"Network": "10.244.0.0/16", "Backend": {}}"#).backend,
            DEFAULT_BACKEND
        );
    }

    #[test]
    fn host_gw_backend() {
        let conf = parse(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}"#);
        assert_eq!(conf.backend, Backend::HostGw { mtu: None });
        assert_eq!(conf.backend.type_name(), "host-gw");
        // vxlan-only settings do not matter for host-gw.
        let conf = parse(
            r#"{"Network": "10.244.0.0/16",
                "Backend": {"Type": "host-gw", "MTU": 9000, "VNI": 0, "Port": 0}}"#,
        );
        assert_eq!(conf.backend, Backend::HostGw { mtu: Some(9000) });
    }

    #[test]
    fn type_names() {
        assert_eq!(DEFAULT_BACKEND.type_name(), "vxlan");
        assert_eq!(Backend::HostGw { mtu: None }.type_name(), "host-gw");
    }

    #[test]
    fn backend_limits_are_inclusive() {
        let conf = parse(
            r#"{"Network": "10.244.0.0/16",
                "Backend": {"VNI": 16777215, "Port": 65535, "MTU": 68}}"#,
        );
        assert_eq!(
            conf.backend,
            Backend::Vxlan {
                vni: 16_777_215,
                port: 65535,
                gbp: false,
                direct_routing: false,
                mtu: Some(68),
            }
        );
        let conf = parse(r#"{"Network": "10.244.0.0/16", "Backend": {"MTU": 65535}}"#);
        assert!(matches!(
            conf.backend,
            Backend::Vxlan {
                mtu: Some(65535),
                ..
            }
        ));
    }

    #[test]
    fn vxlan_device_names_fit_linux_limit() {
        assert_eq!(vxlan_device_name(1), "weft.1");
        assert!(vxlan_device_name(MAX_VNI as u32).len() <= 15);
    }

    // ---- validation errors ----

    #[test]
    fn rejects_unknown_backend_type() {
        rejected(
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "foo"}}"#,
            "Backend.Type",
            &["\"foo\" is unknown", "use vxlan or host-gw"],
        );
        // Case-sensitive, as flannel.
        rejected(
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "VXLAN"}}"#,
            "Backend.Type",
            &["\"VXLAN\""],
        );
        rejected(
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": ""}}"#,
            "Backend.Type",
            &["is unknown"],
        );
    }

    #[test]
    fn rejects_udp_as_not_implemented() {
        rejected(
            r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}"#,
            "Backend.Type",
            &["udp", "not implemented", "use vxlan or host-gw"],
        );
    }

    #[test]
    fn rejects_vni_out_of_range() {
        for vni in ["0", "16777216", "4294967296"] {
            rejected(
                &format!(r#"{{"Network": "10.244.0.0/16", "Backend": {{"VNI": {vni}}}}}"#),
                "Backend.VNI",
                &[vni, "1..=16777215"],
            );
        }
    }

    #[test]
    fn rejects_port_out_of_range() {
        for port in ["0", "65536"] {
            rejected(
                &format!(r#"{{"Network": "10.244.0.0/16", "Backend": {{"Port": {port}}}}}"#),
                "Backend.Port",
                &[port, "1..=65535"],
            );
        }
    }

    #[test]
    fn rejects_mtu_out_of_range() {
        for mtu in ["0", "67", "65536", "4294967296"] {
            for kind in ["vxlan", "host-gw"] {
                rejected(
                    &format!(
                        r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "{kind}", "MTU": {mtu}}}}}"#
                    ),
                    "Backend.MTU",
                    &[mtu, "68..=65535"],
                );
            }
        }
    }

    #[test]
    fn rejects_no_family() {
        rejected(
            r#"{"EnableIPv4": false}"#,
            "EnableIPv4",
            &["EnableIPv6", "enable at least one"],
        );
        rejected(
            r#"{"EnableIPv4": false, "EnableIPv6": false, "Network": "10.244.0.0/16"}"#,
            "EnableIPv4",
            &["enable at least one"],
        );
        rejected("{}", "Network", &["is missing", "10.244.0.0/16"]);
    }

    #[test]
    fn rejects_enabled_family_without_network() {
        rejected(
            r#"{"EnableIPv4": true}"#,
            "Network",
            &["is missing", "EnableIPv4"],
        );
        rejected(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true}"#,
            "IPv6Network",
            &["is missing", "EnableIPv6"],
        );
    }

    #[test]
    fn field_names_are_case_sensitive() {
        // "network" is an unknown field, so Network is missing.
        rejected(
            r#"{"network": "10.244.0.0/16"}"#,
            "Network",
            &["is missing"],
        );
    }

    #[test]
    fn rejects_network_of_the_wrong_family() {
        rejected(
            r#"{"Network": "fd00::/56"}"#,
            "Network",
            &["fd00::/56", "not an IPv4 network", "IPv6Network"],
        );
        rejected(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "10.245.0.0/16"}"#,
            "IPv6Network",
            &["10.245.0.0/16", "not an IPv6 network"],
        );
    }

    #[test]
    fn rejects_host_bits() {
        rejected(
            r#"{"Network": "10.244.0.1/16"}"#,
            "Network",
            &["10.244.0.1/16", "host bits", "use 10.244.0.0/16"],
        );
        rejected(
            r#"{"EnableIPv6": true, "IPv6Network": "fd00:10:244::1/56"}"#,
            "IPv6Network",
            &["use fd00:10:244::/56"],
        );
    }

    #[test]
    fn rejects_network_too_small() {
        rejected(
            r#"{"Network": "10.244.0.0/29"}"#,
            "Network",
            &["10.244.0.0/29", "too small", "/28 or shorter"],
        );
        rejected(
            r#"{"EnableIPv6": true, "IPv6Network": "fd00::/125"}"#,
            "IPv6Network",
            &["too small", "/124 or shorter"],
        );
        rejected(
            r#"{"Network": "10.244.0.0/25", "SubnetLen": 24}"#,
            "Network",
            &[
                "10.244.0.0/25 is too small for SubnetLen 24",
                "at least 27",
                "/22 or shorter",
            ],
        );
        // One bit longer than the network would leave a single usable subnet.
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 17}"#,
            "Network",
            &["too small for SubnetLen 17", "at least 18"],
        );
        rejected(
            r#"{"Network": "10.0.0.0/8", "SubnetLen": 1}"#,
            "Network",
            &["too small for SubnetLen 1", "at least 10"],
        );
        rejected(
            r#"{"EnableIPv6": true, "IPv6Network": "fd00::/64", "IPv6SubnetLen": 64}"#,
            "IPv6Network",
            &["too small for IPv6SubnetLen 64", "at least 66"],
        );
    }

    #[test]
    fn rejects_networks_overlapping_reserved_ranges() {
        for (network, words) in [
            ("224.0.0.0/4", &["224.0.0.0/4", "multicast"][..]),
            ("239.1.0.0/16", &["224.0.0.0/4", "multicast"]),
            ("0.0.0.0/0", &["0.0.0.0/8"]),
            ("0.0.0.0/8", &["\"this\" network"]),
            ("127.0.0.0/8", &["127.0.0.0/8", "loopback"]),
            ("127.42.0.0/16", &["loopback"]),
            ("169.254.0.0/16", &["link-local"]),
            ("240.0.0.0/4", &["240.0.0.0/4", "reserved"]),
            ("255.255.255.0/24", &["reserved"]),
            ("128.0.0.0/1", &["169.254.0.0/16"]),
        ] {
            let json = format!(r#"{{"Network": "{network}"}}"#);
            let shown = rejected(&json, "Network", words);
            assert!(shown.contains(&format!("{network} overlaps")), "{shown}");
            assert!(shown.contains("10.244.0.0/16"), "{shown}");
        }
        for (network, words) in [
            ("ff00::/8", &["ff00::/8", "multicast"][..]),
            ("ff02::/16", &["multicast"]),
            ("fe80::/10", &["link-local"]),
            ("fe80::/64", &["link-local"]),
            ("::/0", &["::/128", "unspecified"]),
            ("::/96", &["unspecified"]),
            ("::ffff:0:0/96", &["IPv4-mapped"]),
        ] {
            let json = format!(r#"{{"EnableIPv6": true, "IPv6Network": "{network}"}}"#);
            let shown = rejected(&json, "IPv6Network", words);
            assert!(shown.contains("fd00:10:244::/56"), "{shown}");
        }
    }

    #[test]
    fn private_and_public_unicast_networks_are_accepted() {
        for network in [
            "10.0.0.0/8",
            "100.64.0.0/10",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "1.0.0.0/8",
            "223.255.0.0/16",
        ] {
            parse(&format!(r#"{{"Network": "{network}"}}"#));
        }
        for network in ["fd00::/8", "2001:db8::/32", "::1:0:0:0/80", "fec0::/10"] {
            parse(&format!(
                r#"{{"EnableIPv6": true, "IPv6Network": "{network}"}}"#
            ));
        }
    }

    #[test]
    fn a_network_holding_the_nodes_own_address_is_refused() {
        let conf =
            parse(r#"{"Network": "10.0.0.0/8", "EnableIPv6": true, "IPv6Network": "fd00::/56"}"#);
        let addrs =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        conf.check_node_addresses("eth0", &addrs(&["192.0.2.10", "fd01::1", "fe80::1"]))
            .unwrap();
        conf.check_node_addresses("eth0", &[]).unwrap();
        for (addr, field) in [("10.1.2.3", "Network"), ("fd00::9", "IPv6Network")] {
            let err = conf
                .check_node_addresses("eth0", &addrs(&["192.0.2.10", addr]))
                .unwrap_err();
            let ConfigError::Invalid { field: got, .. } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(*got, field);
            let shown = err.to_string();
            for word in [addr, "eth0", "(--iface)"] {
                assert!(shown.contains(word), "{shown:?} lacks {word:?}");
            }
        }
        // A disabled family is not checked.
        let conf = parse(r#"{"Network": "10.0.0.0/8", "IPv6Network": "fd00::/56"}"#);
        conf.check_node_addresses("eth0", &addrs(&["fd00::9"]))
            .unwrap();
    }

    #[test]
    fn rejects_subnet_len_too_long() {
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 31}"#,
            "SubnetLen",
            &["31", "out of range", "18 to 30"],
        );
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 300}"#,
            "SubnetLen",
            &["300"],
        );
        rejected(
            r#"{"EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 127}"#,
            "IPv6SubnetLen",
            &["127", "58 to 126"],
        );
    }

    #[test]
    fn rejects_bounds_outside_network() {
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}"#,
            "SubnetMin",
            &["10.245.0.0 is outside Network 10.244.0.0/16"],
        );
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetMax": "10.0.0.0"}"#,
            "SubnetMax",
            &["outside Network"],
        );
        // An address of the other family is outside too.
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "fd00::"}"#,
            "SubnetMin",
            &["fd00:: is outside"],
        );
        rejected(
            r#"{"EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetMax": "fd01::"}"#,
            "IPv6SubnetMax",
            &["outside IPv6Network fd00::/56"],
        );
    }

    #[test]
    fn rejects_unaligned_bounds() {
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.5"}"#,
            "SubnetMin",
            &["10.244.1.5 is not aligned to SubnetLen 24 (use 10.244.1.0)"],
        );
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 26, "SubnetMax": "10.244.9.100"}"#,
            "SubnetMax",
            &["not aligned to SubnetLen 26 (use 10.244.9.64)"],
        );
        rejected(
            r#"{"EnableIPv6": true, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00:0:0:1::1"}"#,
            "IPv6SubnetMin",
            &["not aligned to IPv6SubnetLen 64 (use fd00:0:0:1::)"],
        );
    }

    #[test]
    fn rejects_min_after_max() {
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.5.0"}"#,
            "SubnetMin",
            &["10.244.9.0 is after SubnetMax 10.244.5.0"],
        );
        // A SubnetMax below the default SubnetMin.
        rejected(
            r#"{"Network": "10.244.0.0/16", "SubnetMax": "10.244.0.0"}"#,
            "SubnetMin",
            &["10.244.1.0 is after SubnetMax 10.244.0.0"],
        );
        rejected(
            r#"{"EnableIPv6": true, "IPv6Network": "fd00::/56",
                "IPv6SubnetMin": "fd00:0:0:9::", "IPv6SubnetMax": "fd00:0:0:5::"}"#,
            "IPv6SubnetMin",
            &["after IPv6SubnetMax"],
        );
    }

    // ---- JSON errors ----

    #[test]
    fn json_type_errors_name_the_field() {
        let message = json_error(r#"{"Network": "10.244.0.0/16", "Backend": {"VNI": "one"}}"#);
        assert!(
            message.starts_with("Backend.VNI: invalid type"),
            "{message}"
        );
        let message = json_error(r#"{"Network": "ten"}"#);
        assert!(message.starts_with("Network: "), "{message}");
        let message = json_error(r#"{"Network": "10.244.0.0/16", "SubnetLen": -1}"#);
        assert!(message.starts_with("SubnetLen: "), "{message}");
        let message = json_error(r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0/24"}"#);
        assert!(message.starts_with("SubnetMin: "), "{message}");
        let message = json_error(r#"{"Network": "10.244.0.0/16", "EnableIPv6": "yes"}"#);
        assert!(message.starts_with("EnableIPv6: "), "{message}");
    }

    #[test]
    fn malformed_json_is_rejected() {
        let err = NetConf::parse(r#"{"Network": "10.244.0.0/16""#).unwrap_err();
        assert!(matches!(err, ConfigError::Json(_)), "{err:?}");
        assert!(err.to_string().starts_with("net-conf.json: "), "{err}");
        let message = json_error(r#"{"Network": "10.244.0.0/16"} trailing"#);
        assert!(message.contains("trailing"), "{message}");
        json_error("[]");
        json_error("");
    }

    // ---- reading ----

    #[test]
    fn read_reports_the_path() {
        let path = Path::new("/nonexistent/weft/net-conf.json");
        let err = NetConf::read(path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/weft/net-conf.json"),
            "{err}"
        );
    }

    #[test]
    fn read_parses_the_file() {
        let path = std::env::temp_dir().join(format!(
            "weft-agent-config-test-{}.json",
            std::process::id()
        ));
        std::fs::write(&path, r#"{"Network": "10.244.0.0/16"}"#).unwrap();
        let result = NetConf::read(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(ipv4(&result.unwrap()).network, net("10.244.0.0/16"));
    }
}
