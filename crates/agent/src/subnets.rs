//! Which node subnet a node gets, and how flannel's `subnet.env` describes it.
//!
//! This module owns the arithmetic over a [`Family`]'s range of node subnets:
//! enumerating the candidates, picking the first free one given the subnets
//! already taken, counting them, and rendering `subnet.env`.
//!
//! It must stay pure: no I/O, no kernel access, no clock and no store. The
//! caller gathers the taken subnets (leases) and writes the file.
//!
//! Addresses are handled as u128 integers so that IPv4 and IPv6 share one
//! code path; an IPv4 address is its 32-bit value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::config::{Family, NetConf};

/// All candidate subnets of a family between SubnetMin and SubnetMax
/// inclusive, in order (lazy: IPv6 families can be huge).
pub fn candidates(family: &Family) -> impl Iterator<Item = IpNet> + '_ {
    Span::of(family).into_iter().flat_map(|span| {
        let first = Some(span.first).filter(|&first| first <= span.last);
        std::iter::successors(first, move |&start| span.next(start))
            .map_while(move |start| span.subnet(start))
    })
}

/// The first candidate not in `taken`. `taken` may hold subnets of other
/// sizes or families (a stale lease, a node's host route, another family's
/// subnet): a candidate is taken when it overlaps any of them. `None` when
/// every candidate is taken.
pub fn choose(family: &Family, taken: &[IpNet]) -> Option<IpNet> {
    let span = Span::of(family)?;
    // Sorted by start, the taken ranges can be swept once alongside the
    // ascending candidates: O(m log m) whatever the number of candidates.
    let mut ranges: Vec<(u128, u128)> = taken
        .iter()
        .filter(|net| net.addr().is_ipv4() == span.v4)
        .map(|net| (bits(net.network()), bits(net.broadcast())))
        .collect();
    ranges.sort_unstable();
    let mut start = span.first;
    for (low, high) in ranges {
        if start > span.last {
            return None;
        }
        if high < start {
            continue;
        }
        if low > span.end_of(start) {
            break;
        }
        // Overlaps: the next candidate is the first one past this range.
        start = span.align_up(high.checked_add(1)?)?;
    }
    (start <= span.last).then(|| span.subnet(start)).flatten()
}

/// How many subnets the family can hand out (saturating at `u128::MAX`).
pub fn capacity(family: &Family) -> u128 {
    match Span::of(family) {
        Some(span) if span.first <= span.last => {
            ((span.last - span.first) >> span.host.count_ones()).saturating_add(1)
        }
        _ => 0,
    }
}

/// The gateway of a pod subnet: its first address after the network
/// address, as flannel writes it (`10.244.1.0/24` → `10.244.1.1`). A /32 or
/// /128 has no other address, so it is its own gateway.
pub fn gateway(subnet: &IpNet) -> IpAddr {
    let network = subnet.network();
    if subnet.prefix_len() == subnet.max_prefix_len() {
        return network;
    }
    // Not the last address of the subnet, so the increment cannot overflow.
    address(bits(network) + 1, network.is_ipv4())
}

/// The subnet as `subnet.env` writes it: gateway/prefix, e.g. `10.244.1.1/24`.
pub fn subnet_env_form(subnet: &IpNet) -> String {
    format!("{}/{}", gateway(subnet), subnet.prefix_len())
}

/// flannel's `subnet.env`, byte for byte: each enabled family's network and
/// (when given) this node's subnet, then the MTU and whether to masquerade.
/// Subnets of a disabled family are left out, as flannel does.
pub fn subnet_env(
    conf: &NetConf,
    ipv4: Option<IpNet>,
    ipv6: Option<IpNet>,
    mtu: u32,
    ipmasq: bool,
) -> String {
    let mut lines = Vec::new();
    for (family, subnet, prefix) in [
        (&conf.ipv4, ipv4, "FLANNEL"),
        (&conf.ipv6, ipv6, "FLANNEL_IPV6"),
    ] {
        if let Some(family) = family {
            lines.push(format!("{prefix}_NETWORK={}", family.network));
            if let Some(subnet) = subnet {
                lines.push(format!("{prefix}_SUBNET={}", subnet_env_form(&subnet)));
            }
        }
    }
    lines.push(format!("FLANNEL_MTU={mtu}"));
    lines.push(format!("FLANNEL_IPMASQ={ipmasq}"));
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// A family's candidates as integers: the first and last subnet starts, and
/// the host part of one subnet (all ones below the prefix).
#[derive(Debug, Clone, Copy)]
struct Span {
    first: u128,
    last: u128,
    host: u128,
    len: u8,
    v4: bool,
}

impl Span {
    /// `None` for a family no [`NetConf`] would produce: bounds of different
    /// families, or a prefix longer than the address.
    fn of(family: &Family) -> Option<Span> {
        let (min, max) = (family.subnet_min.addr(), family.subnet_max.addr());
        let v4 = min.is_ipv4();
        let width: u8 = if v4 { 32 } else { 128 };
        if max.is_ipv4() != v4 || family.subnet_len > width {
            return None;
        }
        let all = if v4 { u128::from(u32::MAX) } else { u128::MAX };
        let host = all.checked_shr(family.subnet_len.into()).unwrap_or(0);
        Some(Span {
            first: bits(min) & !host,
            last: bits(max) & !host,
            host,
            len: family.subnet_len,
            v4,
        })
    }

    /// The last address of the subnet starting at `start`.
    fn end_of(&self, start: u128) -> u128 {
        start | self.host
    }

    /// The start of the candidate after the one at `start`, if in range.
    fn next(&self, start: u128) -> Option<u128> {
        self.end_of(start)
            .checked_add(1)
            .filter(|&next| next <= self.last)
    }

    /// The first subnet start at or after `address`.
    fn align_up(&self, address: u128) -> Option<u128> {
        if address & self.host == 0 {
            Some(address)
        } else {
            self.end_of(address).checked_add(1)
        }
    }

    fn subnet(&self, start: u128) -> Option<IpNet> {
        IpNet::new(address(start, self.v4), self.len).ok()
    }
}

fn bits(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

/// The inverse of [`bits`]; callers keep IPv4 values below 2^32.
fn address(bits: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| net(s)).collect()
    }

    fn conf(json: &str) -> NetConf {
        NetConf::parse(json).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    fn v4(json: &str) -> Family {
        conf(json).ipv4.expect("IPv4 enabled")
    }

    fn v6(json: &str) -> Family {
        conf(json).ipv6.expect("IPv6 enabled")
    }

    /// 10.244.0.0/16 with /24 node subnets: 10.244.1.0 ..= 10.244.255.0.
    fn default_v4() -> Family {
        v4(r#"{"Network": "10.244.0.0/16"}"#)
    }

    /// 10.244.0.0/28 with /30 subnets: .4, .8 and .12.
    fn tiny_v4() -> Family {
        v4(r#"{"Network": "10.244.0.0/28"}"#)
    }

    /// The last /24 of the IPv4 space or the last /120 of IPv6 with flannel's
    /// defaults (/26 or /122 subnets from the second on), built directly:
    /// net-conf refuses these reserved ranges, but the arithmetic must still
    /// stop cleanly at the end of the address space.
    fn top_of_the_address_space(network: &str) -> Family {
        let network = net(network);
        let subnet_len = network.prefix_len() + 2;
        let subnet = |addr| IpNet::new(addr, subnet_len).unwrap();
        let size = 1u128 << (network.max_prefix_len() - subnet_len);
        let second = match network.addr() {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + size as u32).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + size).into()),
        };
        Family {
            network,
            subnet_len,
            subnet_min: subnet(second),
            subnet_max: IpNet::new(network.broadcast(), subnet_len).unwrap().trunc(),
        }
    }

    fn default_v6() -> Family {
        v6(r#"{"EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}"#)
    }

    /// What `choose` must return, the slow way.
    fn brute_force_choose(family: &Family, taken: &[IpNet]) -> Option<IpNet> {
        candidates(family).find(|c| !taken.iter().any(|t| t.contains(c) || c.contains(t)))
    }

    // ---- candidates and capacity ----

    #[test]
    fn candidates_run_from_min_to_max() {
        let family = default_v4();
        let all: Vec<IpNet> = candidates(&family).collect();
        assert_eq!(all.len(), 255);
        assert_eq!(all[0], net("10.244.1.0/24"));
        assert_eq!(all[1], net("10.244.2.0/24"));
        assert_eq!(all[254], net("10.244.255.0/24"));
        assert_eq!(capacity(&family), 255);
    }

    #[test]
    fn candidates_respect_explicit_bounds() {
        let family = v4(r#"{"Network": "10.244.0.0/16", "SubnetLen": 26,
                "SubnetMin": "10.244.3.128", "SubnetMax": "10.244.4.64"}"#);
        assert_eq!(
            candidates(&family).collect::<Vec<_>>(),
            nets(&[
                "10.244.3.128/26",
                "10.244.3.192/26",
                "10.244.4.0/26",
                "10.244.4.64/26"
            ])
        );
        assert_eq!(capacity(&family), 4);
    }

    #[test]
    fn single_candidate_when_min_equals_max() {
        let family = v4(
            r#"{"Network": "10.244.0.0/16", "SubnetMin": "10.244.7.0", "SubnetMax": "10.244.7.0"}"#,
        );
        assert_eq!(
            candidates(&family).collect::<Vec<_>>(),
            nets(&["10.244.7.0/24"])
        );
        assert_eq!(capacity(&family), 1);
    }

    #[test]
    fn candidates_at_the_top_of_the_address_space_stop_cleanly() {
        let family = top_of_the_address_space("255.255.255.0/24");
        assert_eq!(
            candidates(&family).collect::<Vec<_>>(),
            nets(&[
                "255.255.255.64/26",
                "255.255.255.128/26",
                "255.255.255.192/26"
            ])
        );
        let family = top_of_the_address_space("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120");
        assert_eq!(candidates(&family).count(), 3);
        assert_eq!(
            candidates(&family).last(),
            Some(net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffc0/122"))
        );
    }

    #[test]
    fn ipv6_candidates() {
        let family = default_v6();
        assert_eq!(
            candidates(&family).take(3).collect::<Vec<_>>(),
            nets(&[
                "fd00:10:244:1::/64",
                "fd00:10:244:2::/64",
                "fd00:10:244:3::/64"
            ])
        );
        assert_eq!(candidates(&family).last(), Some(net("fd00:10:244:ff::/64")));
        assert_eq!(capacity(&family), 255);
    }

    #[test]
    fn huge_ipv6_families_are_lazy() {
        let family = v6(r#"{"EnableIPv6": true, "IPv6Network": "fd00::/8", "IPv6SubnetLen": 120}"#);
        assert_eq!(capacity(&family), (1u128 << 112) - 1);
        assert_eq!(candidates(&family).nth(2), Some(net("fd00::300/120")));
    }

    #[test]
    fn capacity_of_unusual_hand_built_families() {
        let inverted = Family {
            network: net("10.244.0.0/16"),
            subnet_len: 24,
            subnet_min: net("10.244.9.0/24"),
            subnet_max: net("10.244.5.0/24"),
        };
        assert_eq!(capacity(&inverted), 0);
        assert_eq!(candidates(&inverted).count(), 0);
        assert_eq!(choose(&inverted, &[]), None);
        // Every IPv6 address as its own subnet: 2^128 saturates.
        let everything = Family {
            network: net("::/0"),
            subnet_len: 128,
            subnet_min: net("::/128"),
            subnet_max: net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
        };
        assert_eq!(capacity(&everything), u128::MAX);
        assert_eq!(candidates(&everything).nth(1), Some(net("::1/128")));
        let mixed = Family {
            network: net("10.244.0.0/16"),
            subnet_len: 24,
            subnet_min: net("10.244.1.0/24"),
            subnet_max: net("fd00::/64"),
        };
        assert_eq!(capacity(&mixed), 0);
        assert_eq!(candidates(&mixed).count(), 0);
        assert_eq!(choose(&mixed, &[]), None);
    }

    // ---- choose ----

    #[test]
    fn choose_takes_the_first_candidate_when_nothing_is_taken() {
        assert_eq!(choose(&default_v4(), &[]), Some(net("10.244.1.0/24")));
        assert_eq!(choose(&default_v6(), &[]), Some(net("fd00:10:244:1::/64")));
    }

    #[test]
    fn choose_skips_taken_subnets_in_order() {
        let family = default_v4();
        let taken = nets(&["10.244.4.0/24", "10.244.1.0/24", "10.244.2.0/24"]);
        assert_eq!(choose(&family, &taken), Some(net("10.244.3.0/24")));
        let taken = nets(&["10.244.3.0/24", "10.244.1.0/24", "10.244.2.0/24"]);
        assert_eq!(choose(&family, &taken), Some(net("10.244.4.0/24")));
        // Duplicates are harmless.
        let taken = nets(&["10.244.1.0/24", "10.244.1.0/24"]);
        assert_eq!(choose(&family, &taken), Some(net("10.244.2.0/24")));
    }

    #[test]
    fn choose_compares_by_overlap() {
        let family = default_v4();
        // A larger block covers several candidates.
        assert_eq!(
            choose(&family, &nets(&["10.244.0.0/22"])),
            Some(net("10.244.4.0/24"))
        );
        // A single address (e.g. a host route) takes its whole subnet.
        assert_eq!(
            choose(&family, &nets(&["10.244.1.77/32"])),
            Some(net("10.244.2.0/24"))
        );
        // Smaller pieces, unaligned and overlapping one another.
        let taken = nets(&["10.244.1.128/25", "10.244.2.0/26", "10.244.1.0/23"]);
        assert_eq!(choose(&family, &taken), Some(net("10.244.3.0/24")));
        // Something outside the network changes nothing.
        assert_eq!(
            choose(&family, &nets(&["10.0.0.0/16", "192.168.0.0/16"])),
            Some(net("10.244.1.0/24"))
        );
        // A supernet of the whole network leaves nothing.
        assert_eq!(choose(&family, &nets(&["10.0.0.0/8"])), None);
    }

    #[test]
    fn choose_ignores_the_other_family() {
        let family = default_v4();
        // ::/0 would overlap everything if families were mixed up.
        let taken = nets(&["::/0", "fd00:10:244:1::/64"]);
        assert_eq!(choose(&family, &taken), Some(net("10.244.1.0/24")));
        let taken = nets(&["0.0.0.0/0"]);
        assert_eq!(
            choose(&default_v6(), &taken),
            Some(net("fd00:10:244:1::/64"))
        );
    }

    #[test]
    fn choose_returns_none_when_exhausted() {
        let family = tiny_v4();
        assert_eq!(capacity(&family), 3);
        let mut taken = Vec::new();
        for expected in ["10.244.0.4/30", "10.244.0.8/30", "10.244.0.12/30"] {
            let chosen = choose(&family, &taken);
            assert_eq!(chosen, Some(net(expected)));
            taken.extend(chosen);
        }
        assert_eq!(choose(&family, &taken), None);
        // The never-used first subnet being taken does not matter.
        assert_eq!(
            choose(&family, &nets(&["10.244.0.0/30"])),
            Some(net("10.244.0.4/30"))
        );
    }

    #[test]
    fn choose_at_the_top_of_the_address_space() {
        let family = top_of_the_address_space("255.255.255.0/24");
        assert_eq!(
            choose(&family, &nets(&["255.255.255.64/26", "255.255.255.128/25"])),
            None
        );
        assert_eq!(
            choose(&family, &nets(&["255.255.255.192/26"])),
            Some(net("255.255.255.64/26"))
        );
        let family = top_of_the_address_space("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120");
        assert_eq!(
            choose(
                &family,
                &nets(&[
                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff40/122",
                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff80/121"
                ])
            ),
            None
        );
        assert_eq!(choose(&family, &nets(&["::/0"])), None);
    }

    #[test]
    fn choose_is_fast_with_many_taken_subnets() {
        let family = v4(r#"{"Network": "10.0.0.0/8"}"#);
        // The first 1000 candidates, in reverse order.
        let mut taken: Vec<IpNet> = candidates(&family).take(1000).collect();
        taken.reverse();
        assert_eq!(choose(&family, &taken), candidates(&family).nth(1000));
        assert_eq!(choose(&family, &taken), Some(net("10.3.233.0/24")));
    }

    #[test]
    fn choose_skips_huge_taken_ranges_without_walking_them() {
        let family =
            v6(r#"{"EnableIPv6": true, "IPv6Network": "fd00::/16", "IPv6SubnetLen": 120}"#);
        // 2^103 candidates taken; walking them would never finish.
        let taken = nets(&["fd00::/17", "fd00:8000::/18"]);
        assert_eq!(choose(&family, &taken), Some(net("fd00:c000::/120")));
    }

    #[test]
    fn choose_agrees_with_brute_force() {
        let family = v4(r#"{"Network": "10.244.0.0/20", "SubnetLen": 26}"#);
        let mut seed: u64 = 0x5eed;
        let mut random = move |below: u64| {
            // A small LCG keeps the test deterministic and dependency-free.
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % below
        };
        for _ in 0..300 {
            let taken: Vec<IpNet> = (0..random(40))
                .map(|_| {
                    let address = Ipv4Addr::from(0x0af4_0000 + random(1 << 13) as u32);
                    IpNet::new(IpAddr::V4(address), 20 + random(13) as u8)
                        .unwrap()
                        .trunc()
                })
                .collect();
            assert_eq!(
                choose(&family, &taken),
                brute_force_choose(&family, &taken),
                "{taken:?}"
            );
        }
    }

    // ---- gateway and subnet.env ----

    #[test]
    fn gateway_is_the_first_address() {
        assert_eq!(
            gateway(&net("10.244.1.0/24")),
            "10.244.1.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            gateway(&net("fd00:10:244:1::/64")),
            "fd00:10:244:1::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            gateway(&net("10.244.1.2/31")),
            "10.244.1.3".parse::<IpAddr>().unwrap()
        );
        // Host bits in the argument are ignored.
        assert_eq!(
            gateway(&net("10.244.1.9/24")),
            "10.244.1.1".parse::<IpAddr>().unwrap()
        );
        // No room for a separate gateway.
        assert_eq!(
            gateway(&net("255.255.255.255/32")),
            "255.255.255.255".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            gateway(&net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128")),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                .parse::<IpAddr>()
                .unwrap()
        );
    }

    #[test]
    fn subnet_env_form_is_gateway_slash_prefix() {
        assert_eq!(subnet_env_form(&net("10.244.1.0/24")), "10.244.1.1/24");
        assert_eq!(
            subnet_env_form(&net("fd00:10:244:1::/64")),
            "fd00:10:244:1::1/64"
        );
    }

    #[test]
    fn subnet_env_ipv4_only() {
        let conf = conf(r#"{"Network": "10.244.0.0/16"}"#);
        assert_eq!(
            subnet_env(&conf, Some(net("10.244.1.0/24")), None, 1450, true),
            "FLANNEL_NETWORK=10.244.0.0/16\n\
             FLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_MTU=1450\n\
             FLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn subnet_env_dual_stack() {
        let conf = conf(
            r#"{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}"#,
        );
        assert_eq!(
            subnet_env(
                &conf,
                Some(net("10.244.1.0/24")),
                Some(net("fd00:10:244:1::/64")),
                1400,
                false
            ),
            "FLANNEL_NETWORK=10.244.0.0/16\n\
             FLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n\
             FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
             FLANNEL_MTU=1400\n\
             FLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn subnet_env_ipv6_only() {
        let conf = conf(r#"{"EnableIPv6": true, "IPv6Network": "fd00:10:244::/56"}"#);
        // An IPv4 subnet passed by mistake is not written: IPv4 is disabled.
        assert_eq!(
            subnet_env(
                &conf,
                Some(net("10.244.1.0/24")),
                Some(net("fd00:10:244:1::/64")),
                1450,
                true
            ),
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n\
             FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
             FLANNEL_MTU=1450\n\
             FLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn subnet_env_without_a_subnet_yet_keeps_the_network() {
        let conf = conf(r#"{"Network": "10.244.0.0/16"}"#);
        assert_eq!(
            subnet_env(&conf, None, None, 1500, true),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"
        );
    }
}
