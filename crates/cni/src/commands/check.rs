//! CHECK: verify that the attachment still looks the way ADD left it —
//! interface, MAC, addresses, routes, host veth on the bridge, the IPAM
//! reservation, the anti-spoofing elements and the masquerade chain —
//! against `prevResult`.

use std::net::IpAddr;

use weft_datapath::nft::{self, Family};
use weft_datapath::{NetNs, Netlink};
use weft_ipam::Store;

use super::{masquerade_chain, runtime, Invocation};
use crate::plan::{self, Network};
use crate::spec::{CniError, CniResult, Version};
use crate::{antispoof, firewall};

pub fn check(inv: &Invocation, net: &Network, store: &Store) -> Result<(), CniError> {
    inv.require(Version::V0_4_0, "CHECK")?;
    let prev = inv.conf.prev_result.as_ref().ok_or_else(|| {
        CniError::invalid_config("CHECK needs prevResult (the result of ADD) in the configuration")
    })?;
    let prev = CniResult::from_prev(prev)?;
    let netns = NetNs::open(inv.env.netns.as_ref().expect("CHECK requires CNI_NETNS"))?;
    let ifname = &inv.env.ifname;
    let index = prev
        .interfaces
        .iter()
        .position(|i| &i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            CniError::check_failed(format!(
                "prevResult has no interface {ifname} inside a sandbox"
            ))
        })?;
    let expected = &prev.interfaces[index];
    let want_ips: Vec<_> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == index))
        .map(|ip| ip.address)
        .collect();

    let pod_mac = runtime()?.block_on(async {
        let pod = Netlink::connect_in(&netns)?;
        let link = pod.link(ifname).await?.ok_or_else(|| {
            CniError::check_failed(format!("interface {ifname} is missing from the pod"))
        })?;
        let mac = link.mac_string().unwrap_or_default();
        if !expected.mac.is_empty() && !expected.mac.eq_ignore_ascii_case(&mac) {
            return Err(CniError::check_failed(format!(
                "interface {ifname} has MAC {mac}, prevResult says {}",
                expected.mac
            )));
        }
        let have = pod.addresses(link.index).await?;
        if let Some(missing) = want_ips.iter().find(|a| !have.contains(a)) {
            return Err(CniError::check_failed(format!(
                "address {missing} is missing from {ifname}"
            )));
        }
        let mut routes = pod.routes(false).await?;
        routes.extend(pod.routes(true).await?);
        for r in &prev.routes {
            let found = routes
                .iter()
                .any(|have| have.dst == Some(r.dst) && (r.gw.is_none() || have.gateway == r.gw));
            if !found {
                let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                return Err(CniError::check_failed(format!(
                    "route {}{via} is missing from the pod",
                    r.dst
                )));
            }
        }
        let host = Netlink::connect()?;
        let host_name = plan::host_veth_name(&inv.env.container_id, ifname);
        let bridge = host.link(&net.bridge).await?;
        let veth = host.link(&host_name).await?;
        match (bridge, veth) {
            (Some(b), Some(v)) if v.controller == Some(b.index) => Ok(link.mac),
            (None, _) => Err(CniError::check_failed(format!(
                "bridge {} is missing",
                net.bridge
            ))),
            (_, None) => Err(CniError::check_failed(format!(
                "host veth {host_name} is missing"
            ))),
            _ => Err(CniError::check_failed(format!(
                "host veth {host_name} is not attached to bridge {}",
                net.bridge
            ))),
        }
    })?;

    let held = store
        .lock()?
        .addresses_of(&inv.owner())?
        .unwrap_or_default();
    let want: Vec<IpAddr> = want_ips.iter().map(|a| a.addr()).collect();
    if let Some(ip) = want.iter().find(|ip| !held.contains(ip)) {
        return Err(CniError::check_failed(format!(
            "address {ip} is not reserved for this container in IPAM"
        )));
    }
    let host_veth = plan::host_veth_name(&inv.env.container_id, ifname);
    let missing = antispoof::missing(&host_veth, pod_mac.as_deref(), &want)?;
    if missing > 0 {
        return Err(CniError::check_failed(format!(
            "{missing} anti-spoofing elements of {host_veth} are missing from table bridge {} \
             (was the ruleset flushed?); the pod sends unchecked until it is recreated",
            antispoof::TABLE
        )));
    }
    if net.ip_masq {
        let chain = masquerade_chain(net);
        if !nft::chain_exists(Family::Inet, firewall::TABLE, &chain)? {
            return Err(CniError::check_failed(format!(
                "masquerade chain inet {} {chain} is missing (was the ruleset flushed?)",
                firewall::TABLE
            )));
        }
    }
    Ok(())
}
