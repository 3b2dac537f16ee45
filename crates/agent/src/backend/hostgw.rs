//! host-gw: a plain route to each remote node's subnet via that node's
//! underlay address. Only works when all nodes share an L2 segment, so a
//! peer that does not is refused with an explanation rather than routed
//! into a black hole.

use super::{direct_route, BackendError, Desired, LocalNode, Peer};

pub fn plan(local: &LocalNode, peers: &[Peer]) -> Result<Desired, BackendError> {
    let mut desired = Desired::default();
    for peer in peers {
        if !local.is_neighbour(peer) {
            let networks: Vec<String> = local
                .underlay_networks
                .iter()
                .map(|n| n.to_string())
                .collect();
            return Err(BackendError::NotOnSegment {
                peer: peer.name.clone(),
                ip: peer.public_ip,
                networks: networks.join(", "),
            });
        }
        desired.routes.push(direct_route(local, peer));
    }
    Ok(desired)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn local() -> LocalNode {
        LocalNode {
            name: "n1".into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            public_ip: "198.18.0.11".parse().unwrap(),
            underlay_index: 7,
            underlay_networks: vec!["198.18.0.0/24".parse().unwrap()],
        }
    }

    pub(crate) fn peer(name: &str, subnet: &str, ip: &str) -> Peer {
        Peer {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            vtep_mac: Some(vec![2, 0, 0, 0, 0, 2]),
        }
    }

    #[test]
    fn a_route_per_peer_via_its_underlay_address() {
        let d = plan(&local(), &[peer("n2", "10.244.2.0/24", "198.18.0.12")]).unwrap();
        assert_eq!(d.routes.len(), 1);
        let r = &d.routes[0];
        assert_eq!(r.dst.unwrap().to_string(), "10.244.2.0/24");
        assert_eq!(r.gateway.unwrap().to_string(), "198.18.0.12");
        assert_eq!(r.oif, Some(7));
        assert!(d.neighbours.is_empty() && d.fdb.is_empty());
    }

    #[test]
    fn a_peer_off_the_segment_is_refused_with_its_name() {
        let err = plan(&local(), &[peer("far", "10.244.3.0/24", "198.19.5.5")]).unwrap_err();
        assert!(
            err.to_string().contains("far") && err.to_string().contains("vxlan"),
            "{err}"
        );
    }
}
