//! The lab's physical network: an underlay namespace holding one bridge,
//! and each node namespace attached to it by a veth (`eth0` in the node).
//! Nothing here routes to the host: the underlay has no uplink and the
//! nodes have no default route, so lab traffic cannot leave the machine.
//! Ranges that overlap the host's own routes are refused before anything
//! is created.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use weft_datapath::netlink::VethSpec;
use weft_datapath::{netns, NetNs, Netlink, NetlinkError};

pub const BRIDGE: &str = "br0";

#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    #[error(
        "{what} {range} overlaps the host's route to {route}; pick another range (--{flag}) so lab traffic \
         can never be confused with the host's network"
    )]
    Overlap {
        what: &'static str,
        flag: &'static str,
        range: IpNet,
        route: IpNet,
    },
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    NetNs(#[from] netns::NetNsError),
}

/// Refuses `range` when any of the host's routes (default route aside)
/// overlaps it.
pub async fn check_host_routes(
    host: &Netlink,
    what: &'static str,
    flag: &'static str,
    range: IpNet,
) -> Result<(), UnderlayError> {
    let mut routes = host.routes(false).await?;
    routes.extend(host.routes(true).await?);
    for route in routes.iter().filter_map(|r| r.dst) {
        let is_default = route.prefix_len() == 0;
        let overlaps = route.contains(&range.network()) || range.contains(&route.network());
        let local_only = route.addr().is_loopback() || route.addr().is_multicast();
        if !is_default
            && !local_only
            && overlaps
            && route.addr().is_ipv4() == range.addr().is_ipv4()
        {
            return Err(UnderlayError::Overlap {
                what,
                flag,
                range,
                route,
            });
        }
    }
    Ok(())
}

/// Creates the underlay namespace and its bridge.
pub async fn create(ns_name: &str) -> Result<NetNs, UnderlayError> {
    let ns = netns::create_named(ns_name)?;
    let nl = Netlink::connect_in(&ns)?;
    nl.ensure_bridge(BRIDGE, None, vec![0x02, 0x77, 0x65, 0x66, 0x74, 0x01])
        .await?;
    if let Some(lo) = nl.link("lo").await? {
        nl.set_up(lo.index).await?;
    }
    Ok(ns)
}

/// Plugs `node` into the underlay: `n<index>` on the bridge, `eth0` with
/// `ip` inside the node.
pub async fn attach(
    underlay: &NetNs,
    node: &NetNs,
    index: u32,
    ip: Ipv4Addr,
    net: Ipv4Net,
) -> Result<(), UnderlayError> {
    let under = Netlink::connect_in(underlay)?;
    let bridge = under
        .ensure_bridge(BRIDGE, None, vec![0x02, 0x77, 0x65, 0x66, 0x74, 0x01])
        .await?;
    under
        .add_veth(&VethSpec {
            host_name: &format!("n{index}"),
            controller: bridge.index,
            mtu: None,
            peer_name: "eth0",
            peer_netns: node,
            peer_mac: None,
        })
        .await?;
    let inside = Netlink::connect_in(node)?;
    for name in ["lo", "eth0"] {
        if let Some(link) = inside.link(name).await? {
            inside.set_up(link.index).await?;
        }
    }
    let eth0 = inside
        .link("eth0")
        .await?
        .ok_or_else(|| NetlinkError::Request {
            op: "attach node".into(),
            message: "eth0 vanished".into(),
            errno: None,
        })?;
    let addr = IpNet::V4(Ipv4Net::new(ip, net.prefix_len()).expect("prefix from a valid network"));
    inside.add_address(eth0.index, addr).await?;
    Ok(())
}
