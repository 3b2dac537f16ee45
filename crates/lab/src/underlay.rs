//! The lab's physical network: an underlay namespace holding one bridge,
//! and each node namespace — and the external client's — attached to it by
//! a veth (`eth0` inside). Nothing here routes to the host: the underlay has
//! no uplink and nodes and client have no default route, so lab traffic
//! cannot leave the machine. Ranges that overlap the host's own routes or
//! each other are refused before anything is created.

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use weft_datapath::netlink::{Route, VethSpec};
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
    #[error(
        "{what} {range} overlaps the {other_what} {other}; pick another range (--{flag}) so every \
         address has one meaning"
    )]
    Conflict {
        what: &'static str,
        flag: &'static str,
        range: IpNet,
        other_what: &'static str,
        other: IpNet,
    },
    #[error(
        "the LoadBalancer pool {pool} is not inside the underlay {underlay}; pick a range of the \
         underlay (--lb-cidr) so the external client reaches its addresses on-link"
    )]
    PoolOutside { pool: Ipv4Net, underlay: Ipv4Net },
    #[error(
        "the LoadBalancer pool {pool} holds {address}, the address of {holder}; pick another \
         range (--lb-cidr)"
    )]
    PoolHoldsReserved {
        pool: Ipv4Net,
        address: Ipv4Addr,
        holder: &'static str,
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

/// The address ranges of a lab, as `lab up` was given them.
#[derive(Debug, Clone, Copy)]
pub struct Ranges {
    pub underlay: Ipv4Net,
    pub pod_cidr: IpNet,
    pub service_cidr: Ipv4Net,
    pub lb_pool: Ipv4Net,
    /// The external client's address on the underlay.
    pub external: Ipv4Addr,
}

/// Refuses ranges that overlap each other (service CIDR vs pod CIDR and
/// underlay, pod CIDR vs underlay) and a LoadBalancer pool outside the
/// underlay or holding the external client's address or the first node's.
pub fn check_ranges(r: &Ranges, first_node: Ipv4Addr) -> Result<(), UnderlayError> {
    let underlay = IpNet::V4(r.underlay);
    let service = IpNet::V4(r.service_cidr);
    let pairs = [
        ("pod CIDR", "pod-cidr", r.pod_cidr, "underlay", underlay),
        (
            "service CIDR",
            "service-cidr",
            service,
            "pod CIDR",
            r.pod_cidr,
        ),
        (
            "service CIDR",
            "service-cidr",
            service,
            "underlay",
            underlay,
        ),
    ];
    for (what, flag, range, other_what, other) in pairs {
        if overlaps(range, other) {
            return Err(UnderlayError::Conflict {
                what,
                flag,
                range,
                other_what,
                other,
            });
        }
    }
    if !r.underlay.contains(&r.lb_pool) {
        return Err(UnderlayError::PoolOutside {
            pool: r.lb_pool,
            underlay: r.underlay,
        });
    }
    let reserved = [
        (r.external, "the external client"),
        (first_node, "the first node"),
    ];
    match reserved.iter().find(|(ip, _)| r.lb_pool.contains(ip)) {
        Some(&(address, holder)) => Err(UnderlayError::PoolHoldsReserved {
            pool: r.lb_pool,
            address,
            holder,
        }),
        None => Ok(()),
    }
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
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

/// Plugs a namespace (a node's, or the external client's) into the
/// underlay: `port` on the bridge, `eth0` with `ip` inside. It gets no
/// default route: the underlay is all it reaches.
pub async fn attach(
    underlay: &NetNs,
    node: &NetNs,
    port: &str,
    ip: Ipv4Addr,
    net: Ipv4Net,
) -> Result<(), UnderlayError> {
    let under = Netlink::connect_in(underlay)?;
    let bridge = under
        .ensure_bridge(BRIDGE, None, vec![0x02, 0x77, 0x65, 0x66, 0x74, 0x01])
        .await?;
    // A port left from a namespace that was deleted (the kernel removes its
    // veth pair asynchronously) would make the new pair's name clash.
    under.delete_link(port).await?;
    under
        .add_veth(&VethSpec {
            host_name: port,
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

/// Routes the service CIDR on-link through `eth0` in a node. Nodes have no
/// default route, and without a route the kernel refuses a connection to a
/// clusterIP before the Service proxy can translate it (ENETUNREACH); in a
/// real cluster the node's default route plays this part.
pub async fn route_services(node: &NetNs, service_cidr: Ipv4Net) -> Result<(), UnderlayError> {
    const SCOPE_LINK: u8 = 253;
    let inside = Netlink::connect_in(node)?;
    let eth0 = inside
        .link("eth0")
        .await?
        .ok_or_else(|| NetlinkError::Request {
            op: "route the service CIDR".into(),
            message: "the node has no eth0".into(),
            errno: None,
        })?;
    inside
        .add_route(&Route {
            dst: Some(IpNet::V4(service_cidr)),
            oif: Some(eth0.index),
            scope: Some(SCOPE_LINK),
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> Ranges {
        Ranges {
            underlay: "198.18.0.0/24".parse().unwrap(),
            pod_cidr: "10.244.0.0/16".parse().unwrap(),
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            lb_pool: "198.18.0.240/28".parse().unwrap(),
            external: "198.18.0.2".parse().unwrap(),
        }
    }

    const FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

    #[test]
    fn the_defaults_fit_together() {
        check_ranges(&ranges(), FIRST).unwrap();
    }

    #[test]
    fn overlapping_ranges_are_refused_with_the_flag_to_change() {
        let mut r = ranges();
        r.service_cidr = "10.244.128.0/20".parse().unwrap();
        let e = check_ranges(&r, FIRST).unwrap_err();
        assert!(e.to_string().contains("--service-cidr"), "{e}");
        assert!(e.to_string().contains("pod CIDR 10.244.0.0/16"), "{e}");
        let mut r = ranges();
        r.service_cidr = "198.0.0.0/8".parse().unwrap();
        assert!(matches!(
            check_ranges(&r, FIRST),
            Err(UnderlayError::Conflict {
                other_what: "underlay",
                ..
            })
        ));
        let mut r = ranges();
        r.pod_cidr = "198.18.0.0/16".parse().unwrap();
        assert!(check_ranges(&r, FIRST).is_err());
    }

    #[test]
    fn the_pool_lies_in_the_underlay_away_from_client_and_nodes() {
        let mut r = ranges();
        r.lb_pool = "198.19.0.240/28".parse().unwrap();
        assert!(matches!(
            check_ranges(&r, FIRST),
            Err(UnderlayError::PoolOutside { .. })
        ));
        r.lb_pool = "198.18.0.0/28".parse().unwrap();
        let e = check_ranges(&r, FIRST).unwrap_err();
        assert!(e.to_string().contains("198.18.0.2"), "{e}");
        r.lb_pool = "198.18.0.8/29".parse().unwrap();
        let e = check_ranges(&r, FIRST).unwrap_err();
        assert!(e.to_string().contains("the first node"), "{e}");
    }
}
