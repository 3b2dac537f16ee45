//! ADD: reserve addresses, wire bridge + veth + addresses + routes, add
//! masquerade/hostPort rules, wait for the agent to protect the pod, and
//! answer with the result. Any failure after
//! the reservation runs the same teardown as DEL, so a failed ADD leaves
//! nothing behind.

use std::net::IpAddr;

use serde_json::Value;
use weft_datapath::netlink::{format_mac, Route, VethSpec};
use weft_datapath::nft::{self, Family};
use weft_datapath::{sysctl, NetNs, Netlink};
use weft_ipam::{Allocation, Owner, Store};

use super::{del, masquerade_chain, runtime, Invocation};
use crate::plan::{self, Network};
use crate::spec::{CniError, CniResult, Interface, IpConfig, PortMapping};
use crate::{antispoof, firewall, policy_gate};

pub fn add(inv: &Invocation, net: &Network, store: &Store) -> Result<Value, CniError> {
    let netns_path = inv.env.netns.as_ref().expect("ADD requires CNI_NETNS");
    let netns = NetNs::open(netns_path)?;
    let mac = inv.conf.requested_mac()?;
    let port_mappings = inv.conf.port_mappings()?;
    let mut requested = inv.env.args.ips.clone();
    requested.extend(inv.conf.requested_ips()?);

    let owner = inv.owner();
    let (allocations, fresh) = reserve(store, net, &owner, &requested)?;
    if !fresh {
        refuse_if_attached(&inv.env.container_id, &inv.env.ifname)?;
    }
    let wired = wire(inv, net, &netns, &allocations, mac, port_mappings)
        .and_then(|result| protect(inv, net, &result).map(|()| result));
    match wired {
        Ok(result) => Ok(result.to_json(inv.version)),
        Err(err) => {
            // Leave nothing behind; the original error is what the user needs.
            let _ = del::teardown(
                net,
                store,
                &owner,
                None,
                !port_mappings.is_empty(),
                del::Removal::Now,
            );
            Err(err)
        }
    }
}

/// Waits for the node's agent to put the pod's NetworkPolicy in place
/// (when the configuration names its socket and the runtime names the
/// pod: a container that is not a pod is selected by no policy).
fn protect(inv: &Invocation, net: &Network, result: &CniResult) -> Result<(), CniError> {
    let (Some(socket), Some(namespace), Some(name)) = (
        &net.policy_socket,
        &inv.env.args.pod_namespace,
        &inv.env.args.pod_name,
    ) else {
        return Ok(());
    };
    let request = policy_gate::Request {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: inv.env.args.pod_uid.clone(),
        ips: result.ips.iter().map(|ip| ip.address.addr()).collect(),
    };
    policy_gate::ask(socket, &request, policy_gate::ANSWER_TIMEOUT)
}

/// Reserves the attachment's addresses; `false` in the answer means it
/// already held them (an ADD repeated without DEL, or retried after a
/// crash) and they were reused.
fn reserve(
    store: &Store,
    net: &Network,
    owner: &Owner,
    requested: &[IpAddr],
) -> Result<(Vec<Allocation>, bool), CniError> {
    let mut locked = store.lock()?;
    if let Some(held) = locked.addresses_of(owner)? {
        let reused: Option<Vec<Allocation>> =
            held.iter().map(|ip| allocation_of(net, *ip)).collect();
        match reused {
            Some(a) if a.len() == net.sets.len() => return Ok((a, false)),
            _ => {
                locked.release(owner)?;
            }
        }
    }
    let last: Vec<Option<IpAddr>> = (0..net.sets.len())
        .map(|i| locked.last_reserved(i))
        .collect();
    let _host_local = match &net.host_local {
        Some(host_local) => host_local.lock_if_present()?,
        None => None,
    };
    let held_before = |ip| net.host_local.as_ref().is_some_and(|h| h.holds(ip));
    let allocations = weft_ipam::allocate(&net.sets, requested, &last, |ip| {
        locked.is_reserved(ip) || held_before(ip)
    })?;
    let ips: Vec<IpAddr> = allocations.iter().map(|a| a.address.addr()).collect();
    let sets: Vec<usize> = (0..allocations.len()).collect();
    locked.reserve(owner, &ips, &sets)?;
    Ok((allocations, true))
}

/// A second ADD of a live attachment must fail without touching it (its
/// rollback would tear down the working pod); a half-done one is completed.
fn refuse_if_attached(container_id: &str, ifname: &str) -> Result<(), CniError> {
    let host_name = plan::host_veth_name(container_id, ifname);
    let exists = runtime()?.block_on(async { Netlink::connect()?.link(&host_name).await })?;
    match exists {
        Some(_) => Err(CniError::netlink(format!(
            "container {container_id} already has {ifname} attached (host veth {host_name}); \
             call DEL before adding it again"
        ))),
        None => Ok(()),
    }
}

fn allocation_of(net: &Network, ip: IpAddr) -> Option<Allocation> {
    let range = net.sets.iter().find_map(|s| s.range_of(ip))?;
    Some(Allocation {
        address: ipnet::IpNet::new(ip, range.subnet.prefix_len()).ok()?,
        gateway: range.gateway,
    })
}

fn wire(
    inv: &Invocation,
    net: &Network,
    netns: &NetNs,
    allocations: &[Allocation],
    mac: Option<Vec<u8>>,
    port_mappings: &[PortMapping],
) -> Result<CniResult, CniError> {
    let ifname = inv.env.ifname.as_str();
    let host_name = plan::host_veth_name(&inv.env.container_id, ifname);
    let has_v4 = allocations.iter().any(|a| a.address.addr().is_ipv4());
    let has_v6 = allocations.iter().any(|a| a.address.addr().is_ipv6());
    let routes = net.pod_routes(allocations);

    let (bridge, host_veth, pod_if) = runtime()?.block_on(async {
        let host = Netlink::connect()?;
        let pod = Netlink::connect_in(netns)?;
        let bridge = host.ensure_bridge(&net.bridge, net.mtu, plan::bridge_mac(&net.bridge)).await?;
        if has_v6 {
            // The gateway must answer at once; IPAM already guarantees uniqueness.
            sysctl::ensure(&format!("net/ipv6/conf/{}/accept_dad", net.bridge), "0").map_err(io_error)?;
        }
        host.add_veth(&VethSpec {
            host_name: &host_name,
            controller: bridge.index,
            mtu: net.mtu,
            peer_name: ifname,
            peer_netns: netns,
            peer_mac: mac,
        })
        .await
        .map_err(|e| match e.errno() {
            Some(libc::EEXIST) => CniError::netlink(format!(
                "interface {ifname} or host veth {host_name} already exists: was ADD called twice without DEL?"
            )),
            _ => e.into(),
        })?;
        let host_veth = host.link(&host_name).await?.ok_or_else(|| gone(&host_name))?;
        if net.hairpin {
            host.set_hairpin(host_veth.index, true).await?;
        }
        netns
            .run_in(|| configure_pod_sysctls(ifname, has_v6))?
            .map_err(io_error)?;
        if let Some(lo) = pod.link("lo").await? {
            pod.set_up(lo.index).await?;
        }
        let pod_if = pod.link(ifname).await?.ok_or_else(|| gone(ifname))?;
        // While the pod's end is down: it never sends unchecked.
        let ips: Vec<IpAddr> = allocations.iter().map(|a| a.address.addr()).collect();
        antispoof::admit(&host_name, pod_if.mac.as_deref(), &ips)?;
        pod.set_up(pod_if.index).await?;
        for a in allocations {
            pod.add_address(pod_if.index, a.address).await?;
        }
        for r in &routes {
            pod.add_route(&Route {
                dst: Some(r.dst),
                gateway: r.gw,
                oif: Some(pod_if.index),
                mtu: r.mtu,
                advmss: r.advmss,
                priority: r.priority,
                table: r.table,
                scope: r.scope,
                ..Default::default()
            })
            .await?;
        }
        Ok::<_, CniError>((bridge, host_veth, pod_if))
    })?;
    if has_v4 {
        sysctl::ensure("net/ipv4/ip_forward", "1").map_err(io_error)?;
    }
    if has_v6 {
        sysctl::ensure("net/ipv6/conf/all/forwarding", "1").map_err(io_error)?;
    }
    if net.ip_masq {
        ensure_masquerade(net)?;
    }
    if !port_mappings.is_empty() {
        let ips: Vec<IpAddr> = allocations.iter().map(|a| a.address.addr()).collect();
        add_hostports(net, inv, port_mappings, &ips)?;
    }
    add_gateways(net, bridge.index, allocations)?;

    let iface = |link: &weft_datapath::netlink::Link, sandbox: Option<String>| Interface {
        name: link.name.clone(),
        mac: link.mac.as_deref().map(format_mac).unwrap_or_default(),
        mtu: link.mtu,
        sandbox,
    };
    Ok(CniResult {
        interfaces: vec![
            iface(&bridge, None),
            iface(&host_veth, None),
            iface(&pod_if, Some(netns.path().display().to_string())),
        ],
        ips: allocations
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: Some(2),
            })
            .collect(),
        routes,
        dns: net.dns.clone(),
    })
}

/// Gives the bridge each range's gateway address. Done last: the bridge is
/// shared, so a failed ADD's teardown cannot take an address back, and ADD
/// must not fail after adding one.
fn add_gateways(net: &Network, bridge: u32, allocations: &[Allocation]) -> Result<(), CniError> {
    runtime()?.block_on(async {
        let host = Netlink::connect()?;
        for gw in net.gateway_addresses(allocations) {
            host.add_address(bridge, gw).await?;
        }
        Ok(())
    })
}

fn gone(name: &str) -> CniError {
    CniError::netlink(format!(
        "interface {name} disappeared right after it was created; is another program deleting it?"
    ))
}

fn io_error(e: impl std::fmt::Display) -> CniError {
    CniError::io("cannot set a kernel parameter").with_details(e)
}

/// Inside the pod: announce the new address at once (arp_notify), skip
/// IPv6 duplicate-address detection, which would delay usability by ~1 s
/// for an address IPAM already made unique, and derive the link-local
/// address from the MAC.
fn configure_pod_sysctls(ifname: &str, has_v6: bool) -> Result<(), sysctl::SysctlError> {
    sysctl::ensure(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")?;
    if has_v6 {
        sysctl::ensure(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
        // EUI-64: the link-local address anti-spoofing lets the pod use.
        sysctl::ensure(&format!("net/ipv6/conf/{ifname}/addr_gen_mode"), "0")?;
    }
    Ok(())
}

/// Applies the network's masquerade chain unless it is already in place
/// (one netlink query; `nft` runs only the first time or after a flush).
fn ensure_masquerade(net: &Network) -> Result<(), CniError> {
    let chain = masquerade_chain(net);
    if nft::chain_exists(Family::Inet, firewall::TABLE, &chain)? {
        return Ok(());
    }
    let script = firewall::masquerade_script(&chain, &net.pod_subnets(), &net.cluster_networks);
    Ok(nft::apply(&script, None)?)
}

fn add_hostports(
    net: &Network,
    inv: &Invocation,
    mappings: &[PortMapping],
    ips: &[IpAddr],
) -> Result<(), CniError> {
    let chain = plan::hostport_chain(&net.name, &inv.env.container_id, &inv.env.ifname);
    let subnets = net.pod_subnets();
    let snat = plan::network_chain("snat", &net.name, &subnets);
    let script = |stale: &[(String, String)]| {
        firewall::hostports_add_script(&chain, mappings, ips, &snat, &subnets, stale)
    };
    if nft::apply(&script(&[]), None).is_ok() {
        return Ok(());
    }
    // Usually a hostPort still mapped to a pod that vanished without DEL:
    // take the keys over and try once more.
    let stale = firewall::list().stale_keys(&firewall::hostport_keys(mappings), &chain);
    Ok(nft::apply(&script(&stale), None)?)
}
