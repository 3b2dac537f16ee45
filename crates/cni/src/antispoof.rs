//! Anti-spoofing: a pod sends only from its own MAC and addresses, and its
//! ARP and NDP claim only those, so it can neither forge its source nor take
//! a neighbour's address.
//!
//! Enforced in table `bridge weft-cni`, on every frame entering a node
//! bridge from a pod's host veth. The rules are static, created once per
//! node by `nft -f` (the first ADD that finds them missing); they consult
//! sets keyed by the host veth's name, which ADD fills before the pod's end
//! of the veth comes up and DEL and GC empty again (by letting the elements
//! expire, or deleting them on kernels before 6.12), over NETLINK_NETFILTER
//! (no `nft` process on the per-pod path):
//!
//! - `pods`: `ifname` — the bridge ports under guard.
//! - `pod-mac`: `ifname . ether_addr` — the Ethernet source, and the sender
//!   hardware address of ARP.
//! - `pod-ipv4`: `ifname . ipv4_addr` — the IPv4 source, and the sender
//!   address of ARP (besides 0.0.0.0 in an address probe, which claims
//!   nothing).
//! - `pod-ipv6`: `ifname . ipv6_addr` — the IPv6 source: the pod's addresses
//!   and its EUI-64 link-local address (a pod without an IPv6 address sends
//!   no IPv6 at all).
//! - `pod-nd-target`: the same keys, for the target of neighbour
//!   advertisements (and of duplicate-address probes from `::`), which nft's
//!   type checks keep apart from addresses (a raw payload match).
//!
//! What a pod legitimately sends and nothing more: no other EtherTypes (no
//! VLAN tags), no router advertisements or redirects (a pod is not a
//! router), no DHCP (weft-cni assigns addresses itself). hostNetwork pods
//! have no veth and are not affected.
//!
//! A port is guarded once it is in `pods`, which ADD fills in the same
//! transaction as the rest. Ports that are not (other devices someone put on
//! the bridge, or pods that lost their elements to an `nft flush ruleset`)
//! pass unchecked rather than being cut off: CHECK reports such a pod, and
//! STATUS a node whose rules are gone.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use weft_datapath::nft::{self, Family};
use weft_datapath::nft_script::{Hook, Script, SetKind};
use weft_datapath::nft_sets::{self, key, key_ifname, KeyPart, SetElements, Sets};

use crate::spec::CniError;

pub const TABLE: &str = "weft-cni";
const PODS: &str = "pods";
const MACS: &str = "pod-mac";
const IPV4: &str = "pod-ipv4";
const IPV6: &str = "pod-ipv6";
const ND_TARGETS: &str = "pod-nd-target";
const SETS: [&str; 5] = [PODS, MACS, IPV4, IPV6, ND_TARGETS];
/// The base chain; created last, so its presence means all of it is there.
const BASE_CHAIN: &str = "from-pods";

/// Elements are removed by letting them expire (see [`Sets::put`]), so
/// they are added with a timeout too: one no pod outlives.
const LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// The timeout that removes an element.
const EXPIRE_NOW: Duration = Duration::from_millis(1);
/// How often a deletion is retried when concurrent ones got there first.
const DELETE_ATTEMPTS: usize = 5;

/// The node-wide rules and sets. Re-applying it rewrites the rules and
/// keeps every set's elements, so concurrent first ADDs are harmless.
pub fn rules_script() -> String {
    let mut s = Script::new(Family::Bridge, TABLE);
    s.add_table();
    for (set, declaration) in [
        (PODS, "type ifname ; flags timeout ;"),
        (MACS, "type ifname . ether_addr ; flags timeout ;"),
        (IPV4, "type ifname . ipv4_addr ; flags timeout ;"),
        (IPV6, "type ifname . ipv6_addr ; flags timeout ;"),
        (ND_TARGETS, "typeof iifname . @th,64,128 ; flags timeout ;"),
    ] {
        s.add_set(SetKind::Set, set, declaration);
    }
    let chain = |s: &mut Script, name: &str, hook: Option<&Hook>, rules: &[&str]| {
        s.add_chain(name, hook).flush_chain(name);
        for r in rules {
            s.add_rule(name, r);
        }
    };
    chain(
        &mut s,
        "arp-from-pod",
        None,
        &[
            // Only Ethernet/IPv4 ARP has the fields checked below.
            "arp htype != 1 drop",
            "arp ptype != ip drop",
            "arp hlen != 6 drop",
            "arp plen != 4 drop",
            &format!("iifname . arp saddr ether != @{MACS} drop"),
            &format!("iifname . arp saddr ip @{IPV4} accept"),
            "arp operation request arp saddr ip 0.0.0.0 accept",
            "drop",
        ],
    );
    chain(
        &mut s,
        "ipv6-from-pod",
        None,
        &[
            "icmpv6 type { nd-router-advert, nd-redirect } drop",
            // The target field (bits 64..191 of the message) is the address
            // an advertisement claims.
            &format!(
                "icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @{ND_TARGETS} drop"
            ),
            &format!(
                "ip6 saddr :: icmpv6 type nd-neighbor-solicit iifname . @th,64,128 @{ND_TARGETS} accept"
            ),
            &format!("iifname . ip6 saddr @{IPV6} accept"),
            "drop",
        ],
    );
    let hook = Hook {
        chain_type: "filter",
        hook: "prerouting",
        priority: "-300".into(),
        policy: Some("accept"),
    };
    chain(
        &mut s,
        BASE_CHAIN,
        Some(&hook),
        &[
            &format!("iifname != @{PODS} accept"),
            &format!("iifname . ether saddr != @{MACS} drop"),
            "ether type arp jump arp-from-pod",
            &format!("ether type ip iifname . ip saddr @{IPV4} accept"),
            "ether type ip6 jump ipv6-from-pod",
            "drop",
        ],
    );
    s.into_string()
}

/// What one attachment may send as.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity<'a> {
    /// The host end of its veth, the bridge port its frames enter by.
    host_veth: &'a str,
    mac: [u8; 6],
    ips: &'a [IpAddr],
}

impl<'a> Identity<'a> {
    fn new(host_veth: &'a str, mac: Option<&[u8]>, ips: &'a [IpAddr]) -> Result<Self, CniError> {
        let mac = mac
            .and_then(|m| <[u8; 6]>::try_from(m).ok())
            .ok_or_else(|| {
                CniError::netlink(format!(
                    "the pod's end of {host_veth} has no Ethernet MAC address to guard"
                ))
            })?;
        Ok(Identity {
            host_veth,
            mac,
            ips,
        })
    }

    /// The elements that let this attachment send. A pod with IPv6 also
    /// sends from its link-local address, which the kernel derives from
    /// its MAC (EUI-64; ADD sets `addr_gen_mode` so).
    fn elements(&self) -> Result<Vec<SetElements>, CniError> {
        let name = KeyPart::Ifname(self.host_veth);
        let too_long = || {
            CniError::invalid_config(format!(
                "interface name {} is too long for the kernel",
                self.host_veth
            ))
        };
        let keyed = |part: KeyPart| key(&[name, part]).ok_or_else(too_long);
        let keyed_name = || key(&[name]).ok_or_else(too_long);
        let mut v6: Vec<IpAddr> = self.ips.iter().copied().filter(IpAddr::is_ipv6).collect();
        if !v6.is_empty() {
            v6.push(IpAddr::V6(link_local(self.mac)));
        }
        let v4 = self.ips.iter().copied().filter(IpAddr::is_ipv4);
        let v6_keys = v6
            .into_iter()
            .map(|ip| keyed(KeyPart::Ip(ip)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![
            set(PODS, vec![keyed_name()?]),
            set(MACS, vec![keyed(KeyPart::Mac(self.mac))?]),
            set(
                IPV4,
                v4.map(|ip| keyed(KeyPart::Ip(ip)))
                    .collect::<Result<_, _>>()?,
            ),
            set(IPV6, v6_keys.clone()),
            set(ND_TARGETS, v6_keys),
        ])
    }
}

fn set(name: &str, keys: Vec<Vec<u8>>) -> SetElements {
    SetElements {
        set: name.to_string(),
        keys,
    }
}

/// The EUI-64 link-local address the kernel gives an interface with `mac`.
fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let [a, b, c, d, e, f] = mac;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        a ^ 0x02,
        b,
        c,
        0xff,
        0xfe,
        d,
        e,
        f,
    ])
}

/// Lets the attachment behind `host_veth` send as `mac` and `ips`, in one
/// transaction. The node's rules are created the first time, when the sets
/// are missing (ENOENT), so a node that has them pays one round trip. Called
/// while the pod's end of the veth is still down.
pub fn admit(host_veth: &str, mac: Option<&[u8]>, ips: &[IpAddr]) -> Result<(), CniError> {
    let elements = Identity::new(host_veth, mac, ips)?.elements()?;
    let mut sets = open_sets()?;
    match sets.put(&elements, LIFETIME) {
        Err(e) if e.errno() == Some(libc::ENOENT) => {
            nft::apply(&rules_script(), None)?;
            Ok(sets.put(&elements, LIFETIME)?)
        }
        done => Ok(done?),
    }
}

fn open_sets() -> Result<Sets, CniError> {
    Ok(Sets::open(Family::Bridge, TABLE)?)
}

/// Whether the node's anti-spoofing rules exist (one netlink query).
pub fn rules_in_place() -> Result<bool, CniError> {
    Ok(nft::chain_exists(Family::Bridge, TABLE, BASE_CHAIN)?)
}

/// The elements of the attachment that are missing from the sets (none
/// when it is fully guarded).
pub fn missing(host_veth: &str, mac: Option<&[u8]>, ips: &[IpAddr]) -> Result<usize, CniError> {
    let mut sets = open_sets()?;
    let mut missing = 0;
    for want in Identity::new(host_veth, mac, ips)?.elements()? {
        let have = sets.keys(&want.set)?;
        missing += want.keys.iter().filter(|k| !have.contains(k)).count();
    }
    Ok(missing)
}

/// Removes every element of the host veth `host_veth` (nothing when it has
/// none, or the table does not exist).
pub fn revoke(host_veth: &str) -> Result<(), CniError> {
    remove_where(|| Ok(|name: &str| name == host_veth))
}

/// Removes the elements of interfaces that no longer exist: attachments
/// whose DEL never came, or failed part-way. `links` lists the interfaces
/// that do; it is asked after the elements were read, so that an ADD
/// running meanwhile (which creates its veth before its elements) is never
/// mistaken for an orphan.
pub fn revoke_orphans(
    mut links: impl FnMut() -> Result<HashSet<String>, CniError>,
) -> Result<(), CniError> {
    remove_where(|| {
        let live = links()?;
        Ok(move |name: &str| !live.contains(name))
    })
}

/// Lists the sets, asks `doomed` (after the listing) which interfaces go,
/// and removes their elements in one transaction by letting them expire. An
/// element someone else removed meanwhile is put back only to expire at
/// once, so concurrent DELs and GCs need no retries.
fn remove_where<F: Fn(&str) -> bool>(
    mut doomed: impl FnMut() -> Result<F, CniError>,
) -> Result<(), CniError> {
    let mut sets = open_sets()?;
    if !nft_sets::updates_timeouts() {
        return delete_where(&mut sets, doomed);
    }
    let selected = select(listing(&mut sets)?, doomed()?);
    Ok(sets.put(&selected, EXPIRE_NOW)?)
}

/// [`remove_where`] for kernels that cannot expire an element early: the
/// elements are deleted, and the listing is taken again when a concurrent
/// DEL or GC deleted one of them first.
fn delete_where<F: Fn(&str) -> bool>(
    sets: &mut Sets,
    mut doomed: impl FnMut() -> Result<F, CniError>,
) -> Result<(), CniError> {
    for _ in 0..DELETE_ATTEMPTS {
        let selected = select(listing(sets)?, doomed()?);
        match sets.delete(&selected) {
            Err(e) if e.errno() == Some(libc::ENOENT) => continue,
            done => return Ok(done?),
        }
    }
    Err(CniError::firewall(format!(
        "the anti-spoofing sets of bridge {TABLE} kept changing during {DELETE_ATTEMPTS} attempts to clean them; retry"
    )))
}

/// Every element of every set.
fn listing(sets: &mut Sets) -> Result<Vec<SetElements>, CniError> {
    SETS.iter().map(|s| Ok(set(s, sets.keys(s)?))).collect()
}

/// The elements among `present` whose interface `goes`.
fn select(present: Vec<SetElements>, goes: impl Fn(&str) -> bool) -> Vec<SetElements> {
    present
        .into_iter()
        .map(|mut s| {
            s.keys
                .retain(|k| key_ifname(k).is_some_and(|name| goes(&name)));
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_is_eui64_of_the_mac() {
        assert_eq!(
            link_local([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]),
            "fe80::858:aff:fef4:105".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn elements_cover_mac_addresses_and_the_link_local_of_ipv6_pods() {
        let ips: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let id = Identity {
            host_veth: "wv0123456789abc",
            mac: [2, 0, 0, 0, 0, 1],
            ips: &ips,
        };
        let e = id.elements().unwrap();
        let count = |name: &str| e.iter().find(|s| s.set == name).unwrap().keys.len();
        assert_eq!(
            (
                count(PODS),
                count(MACS),
                count(IPV4),
                count(IPV6),
                count(ND_TARGETS)
            ),
            (1, 1, 1, 2, 2)
        );
        let v4_only: Vec<IpAddr> = vec!["10.0.0.6".parse().unwrap()];
        let e = Identity {
            ips: &v4_only,
            ..id.clone()
        }
        .elements()
        .unwrap();
        assert!(e
            .iter()
            .filter(|s| s.set == IPV6)
            .all(|s| s.keys.is_empty()));
        let too_long = Identity {
            host_veth: "a-name-of-16-chr",
            ..id
        };
        assert!(too_long.elements().is_err());
    }

    #[test]
    fn selection_keeps_only_the_doomed_interfaces() {
        let k = |n: &str| key(&[KeyPart::Ifname(n), KeyPart::Mac([0; 6])]).unwrap();
        let present = vec![set(MACS, vec![k("wva"), k("wvb")]), set(IPV4, vec![])];
        let picked = select(present, |n| n == "wvb");
        assert_eq!(picked[0].keys, vec![k("wvb")]);
        assert!(picked[1].keys.is_empty());
    }

    #[test]
    fn the_script_guards_admitted_ports_and_ends_in_drop() {
        let s = rules_script();
        assert!(s.contains("from-pods iifname != @pods accept"), "{s}");
        assert!(s.contains("flush chain bridge weft-cni from-pods"), "{s}");
        assert!(
            !s.contains("flush set"),
            "re-applying must keep the elements"
        );
        assert!(s.trim_end().ends_with("from-pods drop"), "{s}");
    }
}
