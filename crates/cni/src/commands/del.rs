//! DEL: remove the attachment's veth pair, hostPort rules and addresses.
//! Idempotent: deleting what is already gone (or never existed, or whose
//! namespace vanished) succeeds.

use weft_datapath::{nft, Netlink};
use weft_ipam::Owner;

use super::{open_store, runtime, Invocation};
use crate::firewall;
use crate::plan::{self, Network, Ranges};
use crate::spec::CniError;

pub fn del(inv: &Invocation) -> Result<(), CniError> {
    let net = Network::plan(&inv.conf, Ranges::Optional)?;
    let hostports = !inv.conf.runtime_config.port_mappings.is_empty();
    teardown(&net, &inv.owner(), hostports)
}

/// Removes everything one attachment may own. The interface goes first so
/// an address is never free while a live interface still carries it.
pub(super) fn teardown(net: &Network, owner: &Owner, hostports: bool) -> Result<(), CniError> {
    let host_name = plan::host_veth_name(&owner.container_id, &owner.ifname);
    runtime()?.block_on(async {
        // Deleting the host end removes the pod end with it.
        Netlink::connect()?.delete_link(&host_name).await?;
        Ok::<_, CniError>(())
    })?;
    if hostports {
        let chain = plan::hostport_chain(&net.name, &owner.container_id, &owner.ifname);
        if let Some(script) = firewall::list().removal_script(&[chain]) {
            nft::apply(&script, None)?;
        }
    }
    let store = open_store(net)?;
    store.lock()?.release(owner)?;
    Ok(())
}
