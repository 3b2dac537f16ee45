//! weft-cni's nftables rules, all in table `inet weft-cni`:
//!
//! - `masq-<hash>`: per network, masquerades pod traffic leaving the pod
//!   network (`ipMasq`). One chain per network, not per pod, so ADD costs
//!   nothing once it exists — checked with a single netlink query.
//! - hostPorts (`portMappings`): `prerouting`/`output` jump to `hostports`,
//!   which looks up `proto . port` (or `addr . proto . port` for a hostIP) in
//!   a verdict map pointing at the pod's own chain `hp-<hash>` of DNAT rules;
//!   `snat-<hash>` masquerades hairpin hostPort traffic between pods.
//!
//! Script generation is pure; [`apply`] hands the script to `nft -f` as one
//! transaction.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use weft_datapath::nft::Family;
use weft_datapath::nft_script::{Hook, Script, SetKind};

use crate::spec::PortMapping;

pub const TABLE: &str = "weft-cni";

fn set_of<'a>(nets: impl Iterator<Item = &'a IpNet>) -> String {
    let items: Vec<String> = nets.map(IpNet::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

fn script() -> Script {
    Script::new(Family::Inet, TABLE)
}

/// A NAT base chain's hook, accepting by default.
fn nat_hook(hook: &'static str, priority: &str) -> Hook {
    Hook {
        chain_type: "nat",
        hook,
        priority: priority.into(),
        policy: Some("accept"),
    }
}

/// A base chain in the postrouting NAT hook, created or rewritten in place.
fn postrouting_chain(s: &mut Script, chain: &str, rules: &[String]) {
    s.add_table()
        .add_chain(chain, Some(&nat_hook("postrouting", "srcnat")))
        .flush_chain(chain);
    for r in rules {
        s.add_rule(chain, r);
    }
}

/// Masquerade traffic from `pod_subnets` to anywhere but the pod network,
/// the cluster networks and multicast.
pub fn masquerade_script(chain: &str, pod_subnets: &[IpNet], cluster: &[IpNet]) -> String {
    let mut rules = Vec::new();
    for (v6, word, mcast) in [(false, "ip", "224.0.0.0/4"), (true, "ip6", "ff00::/8")] {
        let mine: Vec<&IpNet> = pod_subnets
            .iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mcast: IpNet = mcast.parse().expect("constant network");
        let keep = mine
            .iter()
            .copied()
            .chain(cluster.iter().filter(|n| n.addr().is_ipv6() == v6))
            .chain(std::iter::once(&mcast));
        rules.push(format!(
            "{word} saddr {} {word} daddr != {} masquerade",
            set_of(mine.iter().copied()),
            set_of(keep)
        ));
    }
    let mut s = script();
    postrouting_chain(&mut s, chain, &rules);
    s.into_string()
}

/// The verdict-map key and map of one mapping, in nft syntax.
fn map_key(pm: &PortMapping) -> (&'static str, String) {
    match pm.host_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) {
        Some(ip) if ip.is_ipv4() => (
            "hostports-v4",
            format!("{ip} . {} . {}", pm.protocol, pm.host_port),
        ),
        Some(ip) => (
            "hostports-v6",
            format!("{ip} . {} . {}", pm.protocol, pm.host_port),
        ),
        None => (
            "hostports-any",
            format!("{} . {}", pm.protocol, pm.host_port),
        ),
    }
}

fn hostport_scaffolding() -> Script {
    let mut s = script();
    s.add_table()
        .add_set(
            SetKind::Map,
            "hostports-any",
            "type inet_proto . inet_service : verdict ;",
        )
        .add_set(
            SetKind::Map,
            "hostports-v4",
            "type ipv4_addr . inet_proto . inet_service : verdict ;",
        )
        .add_set(
            SetKind::Map,
            "hostports-v6",
            "type ipv6_addr . inet_proto . inet_service : verdict ;",
        )
        .add_chain("hostports", None)
        .flush_chain("hostports")
        .add_rule(
            "hostports",
            "ip daddr . meta l4proto . th dport vmap @hostports-v4",
        )
        .add_rule(
            "hostports",
            "ip6 daddr . meta l4proto . th dport vmap @hostports-v6",
        )
        .add_rule("hostports", "meta l4proto . th dport vmap @hostports-any");
    for (chain, hook, priority) in [
        ("prerouting", "prerouting", "dstnat"),
        ("output", "output", "-100"),
    ] {
        s.add_chain(chain, Some(&nat_hook(hook, priority)))
            .flush_chain(chain)
            .add_rule(chain, "fib daddr type local jump hostports");
    }
    s
}

/// One pod's hostPorts: its DNAT chain and the map entries pointing at it.
/// `stale` are elements (map, key) to remove first because another pod's
/// chain still holds the key.
pub fn hostports_add_script(
    chain: &str,
    mappings: &[PortMapping],
    pod_ips: &[IpAddr],
    snat_chain: &str,
    pod_subnets: &[IpNet],
    stale: &[(String, String)],
) -> String {
    let mut s = hostport_scaffolding();
    let snat_rules: Vec<String> = [(false, "ip"), (true, "ip6")]
        .iter()
        .filter_map(|(v6, word)| {
            let nets: Vec<&IpNet> = pod_subnets
                .iter()
                .filter(|n| n.addr().is_ipv6() == *v6)
                .collect();
            (!nets.is_empty()).then(|| {
                let set = set_of(nets.into_iter());
                format!("ct status dnat {word} saddr {set} {word} daddr {set} masquerade")
            })
        })
        .collect();
    postrouting_chain(&mut s, snat_chain, &snat_rules);
    s.add_chain(chain, None).flush_chain(chain);
    for pm in mappings {
        let host_ip: Option<IpAddr> = pm.host_ip.as_deref().and_then(|h| h.parse().ok());
        for ip in pod_ips {
            if host_ip.is_some_and(|h| h.is_ipv6() != ip.is_ipv6()) {
                continue;
            }
            let (family, target) = match ip {
                IpAddr::V4(v4) => ("ipv4", format!("ip to {v4}:{}", pm.container_port)),
                IpAddr::V6(v6) => ("ipv6", format!("ip6 to [{v6}]:{}", pm.container_port)),
            };
            s.add_rule(
                chain,
                &format!(
                    "meta nfproto {family} meta l4proto {} th dport {} dnat {target}",
                    pm.protocol, pm.host_port
                ),
            );
        }
    }
    for (map, key) in stale {
        s.delete_elements(map, key);
    }
    for pm in mappings {
        let (map, key) = map_key(pm);
        s.add_elements(map, &format!("{key} : jump {chain}"));
    }
    s.into_string()
}

/// Map keys of `mappings`, for finding stale owners in a listing.
pub fn hostport_keys(mappings: &[PortMapping]) -> Vec<(String, String)> {
    mappings
        .iter()
        .map(|pm| {
            let (m, k) = map_key(pm);
            (m.to_string(), k)
        })
        .collect()
}

/// What `nft -j list table inet weft-cni` shows that weft-cni cares about.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub chains: Vec<String>,
    /// (map, key in nft syntax, target chain)
    pub elements: Vec<(String, String, String)>,
}

impl Listing {
    pub fn parse(json: &str) -> Self {
        let mut out = Listing::default();
        let Ok(doc) = serde_json::from_str::<Value>(json) else {
            return out;
        };
        for item in doc["nftables"].as_array().into_iter().flatten() {
            if let Some(name) = item["chain"]["name"].as_str() {
                out.chains.push(name.to_string());
            }
            let map = &item["map"];
            let Some(map_name) = map["name"].as_str() else {
                continue;
            };
            for elem in map["elem"].as_array().into_iter().flatten() {
                let key = match &elem[0]["concat"] {
                    Value::Array(parts) => parts.iter().map(scalar).collect::<Vec<_>>().join(" . "),
                    other => scalar(other),
                };
                let target = elem[1]["jump"]["target"]
                    .as_str()
                    .or(elem[1]["goto"]["target"].as_str());
                if let Some(target) = target {
                    out.elements
                        .push((map_name.to_string(), key, target.to_string()));
                }
            }
        }
        out
    }

    /// Elements among `keys` that point at a chain other than `chain`.
    pub fn stale_keys(&self, keys: &[(String, String)], chain: &str) -> Vec<(String, String)> {
        self.elements
            .iter()
            .filter(|(m, k, t)| t != chain && keys.iter().any(|(km, kk)| km == m && kk == k))
            .map(|(m, k, _)| (m.clone(), k.clone()))
            .collect()
    }

    /// Script removing `chains` and every map element pointing at them;
    /// `None` when none of them exist.
    pub fn removal_script(&self, chains: &[String]) -> Option<String> {
        let present: Vec<&String> = chains.iter().filter(|c| self.chains.contains(c)).collect();
        if present.is_empty() {
            return None;
        }
        let mut s = script();
        for (map, key, target) in &self.elements {
            if present.contains(&target) {
                s.delete_elements(map, key);
            }
        }
        for c in present {
            s.flush_chain(c).delete_chain(c);
        }
        Some(s.into_string())
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Lists table `inet weft-cni` in the caller's namespace; an absent table
/// is an empty listing.
pub fn list() -> Listing {
    weft_datapath::nft::run(&["-j", "list", "table", "inet", TABLE], None)
        .map(|out| Listing::parse(&out))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(host: u16, ctr: u16, proto: &str, ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: ctr,
            protocol: proto.into(),
            host_ip: ip.map(Into::into),
        }
    }

    #[test]
    fn masquerade_excludes_pod_cluster_and_multicast() {
        let s = masquerade_script(
            "masq-x",
            &[
                "10.244.1.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            &["10.244.0.0/16".parse().unwrap()],
        );
        assert!(s.contains("ip saddr { 10.244.1.0/24 } ip daddr != { 10.244.1.0/24, 10.244.0.0/16, 224.0.0.0/4 } masquerade"), "{s}");
        assert!(
            s.contains("ip6 saddr { fd00::/64 } ip6 daddr != { fd00::/64, ff00::/8 } masquerade"),
            "{s}"
        );
        assert!(
            s.contains("flush chain inet weft-cni masq-x"),
            "re-applying must not duplicate rules"
        );
    }

    #[test]
    fn hostports_dnat_per_family_and_host_ip() {
        let maps = [
            pm(8080, 80, "tcp", None),
            pm(5353, 53, "udp", Some("10.9.9.9")),
        ];
        let ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let s = hostports_add_script(
            "hp-a",
            &maps,
            &ips,
            "snat-a",
            &["10.0.0.0/24".parse().unwrap()],
            &[],
        );
        assert!(
            s.contains("meta nfproto ipv4 meta l4proto tcp th dport 8080 dnat ip to 10.0.0.5:80"),
            "{s}"
        );
        assert!(
            s.contains("meta nfproto ipv6 meta l4proto tcp th dport 8080 dnat ip6 to [fd00::5]:80"),
            "{s}"
        );
        assert!(
            !s.contains("dnat ip6 to [fd00::5]:53"),
            "an IPv4 hostIP must not map to the IPv6 address"
        );
        assert!(
            s.contains(
                "add element inet weft-cni hostports-v4 { 10.9.9.9 . udp . 5353 : jump hp-a }"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "ct status dnat ip saddr { 10.0.0.0/24 } ip daddr { 10.0.0.0/24 } masquerade"
            ),
            "{s}"
        );
    }

    #[test]
    fn listing_drives_removal_and_stale_detection() {
        let json = r#"{"nftables":[{"metainfo":{}},
            {"chain":{"family":"inet","table":"weft-cni","name":"hp-a"}},
            {"chain":{"family":"inet","table":"weft-cni","name":"hp-b"}},
            {"map":{"name":"hostports-any","elem":[[{"concat":["tcp",8080]},{"jump":{"target":"hp-a"}}]]}},
            {"map":{"name":"hostports-v4","elem":[[{"concat":["10.1.1.1","udp",53]},{"jump":{"target":"hp-b"}}]]}}]}"#;
        let l = Listing::parse(json);
        assert_eq!(l.chains, ["hp-a", "hp-b"]);
        let s = l.removal_script(&["hp-a".into(), "hp-zzz".into()]).unwrap();
        assert!(
            s.contains("delete element inet weft-cni hostports-any { tcp . 8080 }"),
            "{s}"
        );
        assert!(s.contains("delete chain inet weft-cni hp-a"));
        assert!(!s.contains("hp-b"));
        assert_eq!(l.removal_script(&["hp-zzz".into()]), None);
        let keys = hostport_keys(&[pm(8080, 80, "tcp", None)]);
        assert_eq!(
            l.stale_keys(&keys, "hp-new"),
            vec![("hostports-any".into(), "tcp . 8080".into())]
        );
        assert!(l.stale_keys(&keys, "hp-a").is_empty());
        assert_eq!(Listing::parse("garbage"), Listing::default());
    }
}
