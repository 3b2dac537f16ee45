//! STATUS: can this plugin serve ADD right now? Code 50 with the reason
//! when not: configuration or subnet file unusable, IPAM state not
//! writable, a pool exhausted, or `nft` missing while rules are needed.
//! Code 51 when, on top, pods already attached have lost part of their
//! network: the bridge, the anti-spoofing rules or the masquerade chain is
//! gone.

use weft_datapath::nft::{self, Family};
use weft_datapath::Netlink;

use super::{masquerade_chain, open_store, runtime, Invocation};
use crate::plan::{Network, Ranges};
use crate::spec::{CniError, ErrorCode, Version};
use crate::{antispoof, firewall};

pub fn status(inv: &Invocation) -> Result<(), CniError> {
    inv.require(Version::V1_1_0, "STATUS")?;
    let unavailable = |e: CniError| CniError::not_available(e.msg).with_details(e.details);
    let net = Network::plan(&inv.conf, Ranges::Required).map_err(unavailable)?;
    let store = open_store(&net).map_err(unavailable)?;
    let reserved = {
        let locked = store.lock().map_err(|e| unavailable(e.into()))?;
        locked.reservations().map_err(|e| unavailable(e.into()))?
    };
    if !reserved.is_empty() {
        check_existing_pods(&net)?;
    }
    for set in &net.sets {
        let used = reserved
            .iter()
            .filter(|(ip, _)| set.range_of(*ip).is_some())
            .count() as u128;
        if used >= set.capacity() {
            return Err(CniError::not_available(format!(
                "address pool {set} is exhausted ({used} addresses in use); delete pods or enlarge the range"
            )));
        }
    }
    // The anti-spoofing rules are created by nft the first time; after that
    // only masquerade and hostPorts run it.
    let wants_nft = net.ip_masq
        || !inv.conf.port_mappings()?.is_empty()
        || !antispoof::rules_in_place().map_err(unavailable)?;
    if wants_nft && !on_path("nft") {
        return Err(CniError::not_available(
            "weft-cni's rules (anti-spoofing, ipMasq, portMappings) need the nft command, which is not installed; install the nftables package",
        ));
    }
    Ok(())
}

/// With pods attached, a missing bridge or masquerade chain means they are
/// cut off (partly): code 51.
fn check_existing_pods(net: &Network) -> Result<(), CniError> {
    let limited = |what: String| CniError::new(ErrorCode::LimitedConnectivity, what);
    let bridge = runtime()?.block_on(async { Netlink::connect()?.link(&net.bridge).await })?;
    if bridge.is_none() {
        return Err(limited(format!(
            "bridge {} is gone while pods are attached to it; recreate the pods (or run GC)",
            net.bridge
        )));
    }
    if !antispoof::rules_in_place()? {
        return Err(limited(format!(
            "anti-spoofing rules (table bridge {}) are gone (was the ruleset flushed?); \
             attached pods send unchecked until they are recreated",
            antispoof::TABLE
        )));
    }
    if net.ip_masq && !nft::chain_exists(Family::Inet, firewall::TABLE, &masquerade_chain(net))? {
        return Err(limited(format!(
            "masquerade chain inet {} {} is gone (was the ruleset flushed?); the next ADD restores it",
            firewall::TABLE,
            masquerade_chain(net)
        )));
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
