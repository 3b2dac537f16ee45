//! DEL: remove the attachment's veth pair, hostPort rules, anti-spoofing
//! elements and addresses (also those host-local gave a pod wired before
//! the node moved to weft).
//! Idempotent: deleting what is already gone (or never existed, or whose
//! namespace vanished) succeeds.
//!
//! Unregistering a network device costs the kernel an RCU barrier — 15 to
//! 30 ms, most of a reference plugin's DEL. weft-cni does not make the
//! runtime wait for it: DEL takes both ends of the pair out of service at
//! once (down, off the bridge, renamed out of the way so an immediate re-ADD
//! cannot collide), releases the addresses, and leaves the unregistration to
//! a detached `weft-cni --reap-link NAME` process. GC removes any retired
//! link whose reaper never ran.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use weft_datapath::{nft, NetNs, Netlink};
use weft_ipam::{Owner, Store};

use super::{runtime, Invocation};
use crate::plan::{self, Network};
use crate::spec::{CniError, NetConf};
use crate::{antispoof, firewall};

/// The hidden command line of the reaper process.
pub const REAP_FLAG: &str = "--reap-link";

pub fn del(inv: &Invocation, net: &Network, store: &Store) -> Result<(), CniError> {
    let hostports = may_have_hostports(&inv.conf);
    teardown(
        net,
        store,
        &inv.owner(),
        inv.env.netns.as_deref(),
        hostports,
        Removal::Deferred,
    )
}

/// Whether the attachment may own hostPort rules. Runtime configuration DEL
/// cannot read must not block teardown: then the rules are looked for anyway.
fn may_have_hostports(conf: &NetConf) -> bool {
    match conf.runtime_config() {
        Ok(rc) => !rc.port_mappings.is_empty(),
        Err(e) => {
            tracing::warn!(
                "DEL goes on without the runtimeConfig it cannot use ({}); removing any hostPort rules of the container",
                e.msg
            );
            true
        }
    }
}

/// How the veth pair goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    /// Unregistered before returning (a failed ADD must leave nothing).
    Now,
    /// Retired now, unregistered by a detached reaper.
    Deferred,
}

/// Removes everything one attachment may own. The interface is cut off
/// first, so an address is never free while a live interface carries it.
pub(super) fn teardown(
    net: &Network,
    store: &Store,
    owner: &Owner,
    netns: Option<&Path>,
    hostports: bool,
    removal: Removal,
) -> Result<(), CniError> {
    let host_name = plan::host_veth_name(&owner.container_id, &owner.ifname);
    let retired = runtime()?.block_on(async {
        let host = Netlink::connect()?;
        let Some(link) = host.link(&host_name).await? else {
            // Not wired by weft-cni (a pod from before the node moved to
            // weft, its host end named by that plugin), or half gone: the
            // pod's end takes the pair with it, before its address is free.
            if let Some(ns) = netns.and_then(|p| NetNs::open(p).ok()) {
                Netlink::connect_in(&ns)?.delete_link(&owner.ifname).await?;
            }
            return Ok::<_, CniError>(None);
        };
        if removal == Removal::Now {
            host.delete_link(&host_name).await?;
            return Ok(None);
        }
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let retired = plan::retired_link_name(
            &owner.container_id,
            &owner.ifname,
            &format!("{nonce}-{}", std::process::id()),
        );
        if let Some(ns) = netns.and_then(|p| NetNs::open(p).ok()) {
            let pod = Netlink::connect_in(&ns)?;
            if let Some(pod_link) = pod.link(&owner.ifname).await? {
                pod.retire_link(pod_link.index, &retired).await?;
            }
        }
        host.retire_link(link.index, &retired).await?;
        Ok(Some(retired))
    })?;
    if hostports {
        let chain = plan::hostport_chain(&net.name, &owner.container_id, &owner.ifname);
        if let Some(script) = firewall::list().removal_script(&[chain]) {
            nft::apply(&script, None)?;
        }
    }
    antispoof::revoke(&host_name)?;
    store.lock()?.release(owner)?;
    if let Some(host_local) = &net.host_local {
        host_local.release(owner)?;
    }
    if let Some(name) = retired {
        if !spawn_reaper(&name) {
            // E.g. the binary was replaced by an upgrade: unregister here instead.
            reap(&name)?;
        }
    }
    Ok(())
}

fn spawn_reaper(link: &str) -> bool {
    let Ok(exe) = std::env::current_exe() else {
        return false;
    };
    Command::new(exe)
        .args([REAP_FLAG, link])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .is_ok()
}

/// The reaper's whole job: unregister one retired link.
pub fn reap(link: &str) -> Result<(), CniError> {
    if !plan::is_retired_link_name(link) {
        return Err(CniError::invalid_env(format!(
            "{link:?} is not a retired weft-cni link"
        )));
    }
    runtime()?.block_on(async {
        Netlink::connect()?.delete_link(link).await?;
        Ok(())
    })
}
