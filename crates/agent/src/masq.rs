//! The agent's TrafficManager: masquerade pod traffic that leaves the
//! cluster network (pod-to-pod traffic, on any node, is never NATed), in
//! weft's own nftables table `inet weft`. The rule set is generated here
//! (pure) and applied atomically; [`ensure`] re-applies it only when the
//! kernel lost it, checked with one netlink query.

use ipnet::IpNet;
use weft_datapath::nft::{self, Family, NftError};
use weft_datapath::nft_script::{Hook, Script};

pub const TABLE: &str = "weft";
const CHAIN: &str = "postrouting";

/// The rule set for `networks` (the cluster's pod networks).
pub fn script(networks: &[IpNet]) -> String {
    let hook = Hook {
        chain_type: "nat",
        hook: "postrouting",
        priority: "srcnat".into(),
        policy: Some("accept"),
    };
    let mut s = Script::new(Family::Inet, TABLE);
    s.add_table()
        .add_chain(CHAIN, Some(&hook))
        .flush_chain(CHAIN);
    for net in networks {
        let (word, mcast) = if net.addr().is_ipv4() {
            ("ip", "224.0.0.0/4")
        } else {
            ("ip6", "ff00::/8")
        };
        s.add_rule(
            CHAIN,
            &format!("{word} saddr {net} {word} daddr {net} return"),
        );
        s.add_rule(
            CHAIN,
            &format!("{word} saddr {net} {word} daddr != {mcast} masquerade fully-random"),
        );
    }
    s.into_string()
}

/// Applies the rules unless they are already in place.
pub fn ensure(networks: &[IpNet]) -> Result<bool, NftError> {
    if nft::chain_exists(Family::Inet, TABLE, CHAIN)? {
        return Ok(false);
    }
    nft::apply(&script(networks), None)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_to_pod_returns_before_masquerade() {
        let s = script(&["10.244.0.0/16".parse().unwrap()]);
        let ret = s
            .find("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return")
            .unwrap();
        let masq = s
            .find("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade")
            .unwrap();
        assert!(ret < masq);
        assert!(
            s.contains("flush chain inet weft postrouting"),
            "re-applying must not duplicate"
        );
    }
}
