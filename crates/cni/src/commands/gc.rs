//! GC: release everything of this network that no valid attachment owns —
//! IPAM reservations (including those of plugins killed mid-ADD), host veths
//! left on the bridge, retired veths whose reaper never ran, hostPort
//! chains, the lock files of containers that are gone, and the
//! anti-spoofing elements of veths that no longer exist.

use std::collections::HashSet;

use weft_datapath::{nft, Netlink};
use weft_ipam::Owner;

use super::{open_store, runtime, Invocation};
use crate::plan::{self, Network, Ranges};
use crate::spec::{CniError, Version};
use crate::{antispoof, firewall};

pub fn gc(inv: &Invocation) -> Result<(), CniError> {
    inv.require(Version::V1_1_0, "GC")?;
    let net = Network::plan(&inv.conf, Ranges::Optional)?;
    let keep: HashSet<Owner> = inv
        .conf
        .gc_keep_list()
        .into_iter()
        .map(|a| Owner::new(a.container_id, a.ifname))
        .collect();

    let veths: HashSet<String> = keep
        .iter()
        .map(|o| plan::host_veth_name(&o.container_id, &o.ifname))
        .collect();
    runtime()?.block_on(async {
        let host = Netlink::connect()?;
        let Some(bridge) = host.link(&net.bridge).await? else {
            return Ok::<_, CniError>(());
        };
        for link in host.links().await? {
            let attached =
                link.controller == Some(bridge.index) && plan::is_host_veth_name(&link.name);
            if (attached && !veths.contains(&link.name)) || plan::is_retired_link_name(&link.name) {
                host.delete_link(&link.name).await?;
            }
        }
        Ok(())
    })?;

    antispoof::revoke_orphans(|| {
        runtime()?.block_on(async {
            let links = Netlink::connect()?.links().await?;
            Ok(links.into_iter().map(|l| l.name).collect())
        })
    })?;

    let prefix = plan::hostport_chain_prefix(&net.name);
    let valid_chains: HashSet<String> = keep
        .iter()
        .map(|o| plan::hostport_chain(&net.name, &o.container_id, &o.ifname))
        .collect();
    let listing = firewall::list();
    let stale: Vec<String> = listing
        .chains
        .iter()
        .filter(|c| c.starts_with(&prefix) && !valid_chains.contains(*c))
        .cloned()
        .collect();
    if let Some(script) = listing.removal_script(&stale) {
        nft::apply(&script, None)?;
    }

    let store = open_store(&net)?;
    store.lock()?.garbage_collect(|o| keep.contains(o))?;
    let kept: HashSet<&str> = keep.iter().map(|o| o.container_id.as_str()).collect();
    for id in store.locked_containers()? {
        if !kept.contains(id.as_str()) {
            store.lock_container(&id)?.remove()?;
        }
    }
    Ok(())
}
