//! VXLAN: an overlay device `weft.<VNI>` (learning off) whose address is
//! this node's subnet address /32 (flannel's layout). For each peer: a
//! permanent neighbour (peer VTEP address → peer VTEP MAC), an FDB entry
//! (peer VTEP MAC → peer underlay address) and an onlink route to the
//! peer's subnet via its VTEP address. With DirectRouting, peers on the
//! same L2 segment get a plain route instead, skipping encapsulation.

use weft_datapath::neighbours::{FdbEntry, Neighbour};
use weft_datapath::netlink::{Route, WEFT_ROUTE_PROTOCOL};

use super::{direct_route, BackendError, Desired, LocalNode, Peer};

/// VXLAN adds 50 bytes of headers (IPv4 underlay).
pub const OVERHEAD: u32 = 50;

/// A stable MAC for this node's VTEP (locally administered, unicast), so a
/// restarted agent publishes the same one and peers need no update.
pub fn vtep_mac(node: &str, vni: u32) -> Vec<u8> {
    // FNV-1a: a stable spread of the name, not security.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in node.bytes().chain(vni.to_be_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let b = h.to_be_bytes();
    vec![(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

pub fn plan(
    local: &LocalNode,
    peers: &[Peer],
    device: u32,
    direct_routing: bool,
) -> Result<Desired, BackendError> {
    let mut desired = Desired::default();
    for peer in peers {
        if direct_routing && local.is_neighbour(peer) {
            desired.routes.push(direct_route(local, peer));
            continue;
        }
        let mac = peer.vtep_mac.clone().ok_or_else(|| BackendError::NoVtep {
            peer: peer.name.clone(),
        })?;
        let vtep_ip = peer.subnet.network();
        desired.neighbours.push(Neighbour {
            index: device,
            ip: vtep_ip,
            mac: mac.clone(),
        });
        desired.fdb.push(FdbEntry {
            index: device,
            mac,
            dst: peer.public_ip,
        });
        desired.routes.push(Route {
            dst: Some(peer.subnet),
            gateway: Some(vtep_ip),
            oif: Some(device),
            onlink: true,
            protocol: Some(WEFT_ROUTE_PROTOCOL),
            ..Default::default()
        });
    }
    Ok(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::hostgw::tests::{local, peer};

    #[test]
    fn each_peer_gets_neighbour_fdb_and_onlink_route() {
        let d = plan(
            &local(),
            &[peer("n2", "10.244.2.0/24", "198.18.0.12")],
            9,
            false,
        )
        .unwrap();
        assert_eq!(d.neighbours[0].ip.to_string(), "10.244.2.0");
        assert_eq!(d.fdb[0].dst.to_string(), "198.18.0.12");
        assert_eq!(d.fdb[0].mac, d.neighbours[0].mac);
        let r = &d.routes[0];
        assert!(r.onlink && r.oif == Some(9));
        assert_eq!(r.gateway.unwrap().to_string(), "10.244.2.0");
    }

    #[test]
    fn direct_routing_skips_the_tunnel_only_for_neighbours() {
        let peers = [
            peer("near", "10.244.2.0/24", "198.18.0.12"),
            peer("far", "10.244.3.0/24", "198.19.0.9"),
        ];
        let d = plan(&local(), &peers, 9, true).unwrap();
        assert_eq!(d.routes.len(), 2);
        assert_eq!(
            d.routes[0].oif,
            Some(7),
            "neighbour: plain route on the underlay"
        );
        assert_eq!(d.routes[1].oif, Some(9), "remote: through the tunnel");
        assert_eq!(d.fdb.len(), 1);
    }

    #[test]
    fn vtep_mac_is_stable_and_local_unicast() {
        let a = vtep_mac("node-1", 1);
        assert_eq!(a, vtep_mac("node-1", 1));
        assert_ne!(a, vtep_mac("node-2", 1));
        assert_eq!(a[0] & 0x03, 0x02);
    }

    #[test]
    fn a_peer_without_vtep_is_an_error() {
        let mut p = peer("n2", "10.244.2.0/24", "198.19.0.12");
        p.vtep_mac = None;
        assert!(matches!(
            plan(&local(), &[p], 9, false),
            Err(BackendError::NoVtep { .. })
        ));
    }
}
