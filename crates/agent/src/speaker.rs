//! LoadBalancer addresses on the node network, like MetalLB's layer-2 mode:
//! for each address exactly one live node answers ARP, and when that node
//! stops another takes over (with gratuitous ARP, so clients switch at once).
//!
//! Liveness is a node heartbeat: every agent renews a
//! `coordination.k8s.io/v1` Lease named after its node in
//! `kube-node-lease`, as kubelets do. The owner of an address is chosen by
//! rendezvous hashing over the live nodes allowed to serve it, so every
//! agent computes the same owner without talking to the others, and a
//! failure moves only the addresses the failed node held.
//!
//! The election is pure; heartbeats and the live nodes come through the
//! cluster seam ([`weft_cluster::Liveness`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

/// The node that announces `ip` among `candidates` (highest rendezvous
/// hash), if any.
pub fn owner<'a>(
    ip: Ipv4Addr,
    candidates: impl IntoIterator<Item = &'a String>,
) -> Option<&'a String> {
    candidates.into_iter().max_by_key(|node| {
        let digest = Sha256::digest(format!("{ip}/{node}").as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first), node.as_str())
    })
}

/// The addresses `me` must announce: `addresses` maps each to the nodes
/// allowed to serve it (`None`: any node).
pub fn announced_by(
    me: &str,
    addresses: &BTreeMap<Ipv4Addr, Option<BTreeSet<String>>>,
    live: &BTreeSet<String>,
) -> BTreeSet<Ipv4Addr> {
    addresses
        .iter()
        .filter(|(ip, allowed)| {
            let candidates = live
                .iter()
                .filter(|n| allowed.as_ref().is_none_or(|a| a.contains(*n)));
            owner(**ip, candidates).is_some_and(|o| o == me)
        })
        .map(|(ip, _)| *ip)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn exactly_one_live_node_announces_each_address() {
        let live = nodes(&["node-1", "node-2", "node-3"]);
        let addrs: BTreeMap<Ipv4Addr, Option<BTreeSet<String>>> = (240..250)
            .map(|i| (Ipv4Addr::new(198, 18, 0, i), None))
            .collect();
        let mut seen = BTreeSet::new();
        for me in &live {
            for ip in announced_by(me, &addrs, &live) {
                assert!(seen.insert(ip), "{ip} announced twice");
            }
        }
        assert_eq!(seen.len(), addrs.len());
    }

    #[test]
    fn a_failed_node_moves_only_its_own_addresses() {
        let live = nodes(&["node-1", "node-2", "node-3"]);
        let addrs: BTreeMap<Ipv4Addr, Option<BTreeSet<String>>> = (1..=50)
            .map(|i| (Ipv4Addr::new(198, 18, 0, i), None))
            .collect();
        let before: BTreeMap<Ipv4Addr, String> = addrs
            .keys()
            .map(|ip| (*ip, owner(*ip, &live).unwrap().clone()))
            .collect();
        let after_live = nodes(&["node-1", "node-3"]);
        for (ip, was) in &before {
            let now = owner(*ip, &after_live).unwrap();
            if was != "node-2" {
                assert_eq!(now, was, "{ip} moved although its node is alive");
            }
        }
        assert!(
            before.values().any(|n| n == "node-2"),
            "test needs node-2 to own something"
        );
    }

    #[test]
    fn local_policy_limits_candidates_and_nobody_announces_without_one() {
        let live = nodes(&["node-1", "node-2"]);
        let ip = Ipv4Addr::new(198, 18, 0, 240);
        let only_2: BTreeMap<_, _> = [(ip, Some(nodes(&["node-2", "node-9"])))].into();
        assert!(announced_by("node-1", &only_2, &live).is_empty());
        assert_eq!(announced_by("node-2", &only_2, &live), [ip].into());
        let none: BTreeMap<_, _> = [(ip, Some(nodes(&[])))].into();
        assert!(announced_by("node-2", &none, &live).is_empty());
    }
}
