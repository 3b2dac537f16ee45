//! Backends connect this node's pod subnet to every other node's (flannel's
//! `Backend` → `Network`). Each backend is pure planning: given this node
//! and its peers it says which routes, neighbours and FDB entries the kernel
//! must hold; [`crate::reconcile`] makes the kernel match. The one kernel
//! object a backend owns itself is its device (the VXLAN interface).

pub mod hostgw;
pub mod vxlan;

use std::net::IpAddr;

use ipnet::IpNet;
use weft_datapath::neighbours::{FdbEntry, Neighbour};
use weft_datapath::netlink::Route;

/// This node as the backends see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    pub name: String,
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    /// The underlay interface and the networks directly connected to it.
    pub underlay_index: u32,
    pub underlay_networks: Vec<IpNet>,
}

/// Another node, from its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    /// The MAC of its VXLAN device (VXLAN only).
    pub vtep_mac: Option<Vec<u8>>,
}

impl LocalNode {
    /// Whether `peer` shares an L2 segment with this node: its address is
    /// inside a network directly connected to the underlay interface.
    pub fn is_neighbour(&self, peer: &Peer) -> bool {
        self.underlay_networks
            .iter()
            .any(|n| n.contains(&peer.public_ip))
    }
}

/// What the kernel must hold for the overlay to work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<FdbEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error(
        "host-gw needs every node on one L2 segment, but node {peer} ({ip}) is not on a network directly \
         connected to this node's underlay ({networks}); use Backend.Type vxlan, or vxlan with DirectRouting"
    )]
    NotOnSegment {
        peer: String,
        ip: IpAddr,
        networks: String,
    },
    #[error(
        "node {peer} published no VXLAN VTEP MAC in its lease; is it running a vxlan backend?"
    )]
    NoVtep { peer: String },
}

/// The route to a peer's subnet via its underlay address (host-gw, and
/// VXLAN's DirectRouting).
pub(crate) fn direct_route(local: &LocalNode, peer: &Peer) -> Route {
    Route {
        dst: Some(peer.subnet),
        gateway: Some(peer.public_ip),
        oif: Some(local.underlay_index),
        protocol: Some(weft_datapath::netlink::WEFT_ROUTE_PROTOCOL),
        ..Default::default()
    }
}
