//! Neighbour (ARP/NDP) entries and bridge/VXLAN forwarding-database
//! entries: what a VXLAN overlay needs per remote node — the remote VTEP's
//! MAC for its VTEP address, and where to send frames for that MAC.
//! Entries written here are permanent and replaced in place, so re-applying
//! the same state is a no-op.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;

use crate::netlink::{Netlink, NetlinkError};

type Result<T> = std::result::Result<T, NetlinkError>;

/// A permanent neighbour: `ip` is at `mac` on link `index`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Vec<u8>,
}

/// An FDB entry on a VXLAN device: frames for `mac` go to `dst` (the remote
/// node's underlay address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: Vec<u8>,
    pub dst: IpAddr,
}

fn addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn ip_of(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // In AF_BRIDGE (FDB) dumps the parser cannot tell the family of
        // NDA_DST and leaves raw bytes; their length tells.
        NeighbourAddress::Other(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(bytes.as_slice())
                .ok()
                .map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

fn lladdr(msg: &NeighbourMessage) -> Option<Vec<u8>> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
        _ => None,
    })
}

fn dst(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => ip_of(d),
        _ => None,
    })
}

impl Netlink {
    pub async fn replace_neighbour(&self, n: &Neighbour) -> Result<()> {
        self.handle
            .neighbours()
            .add(n.index, n.ip)
            .link_layer_address(&n.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetlinkError::request(format!("set neighbour {} on link {}", n.ip, n.index), e)
            })
    }

    pub async fn delete_neighbour(&self, n: &Neighbour) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = if n.ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.ifindex = n.index;
        msg.attributes
            .push(NeighbourAttribute::Destination(addr(n.ip)));
        self.delete_entry(msg, format!("delete neighbour {}", n.ip))
            .await
    }

    /// Permanent neighbours on link `index`.
    pub async fn permanent_neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::request("list neighbours", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter(|m| matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6))
            .filter_map(|m| {
                Some(Neighbour {
                    index,
                    ip: dst(m)?,
                    mac: lladdr(m)?,
                })
            })
            .collect())
    }

    pub async fn replace_fdb(&self, e: &FdbEntry) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(e.index, &e.mac)
            .destination(e.dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|err| {
                NetlinkError::request(
                    format!("set fdb entry -> {} on link {}", e.dst, e.index),
                    err,
                )
            })
    }

    pub async fn delete_fdb(&self, e: &FdbEntry) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = e.index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.clone()));
        msg.attributes
            .push(NeighbourAttribute::Destination(addr(e.dst)));
        self.delete_entry(msg, format!("delete fdb entry -> {}", e.dst))
            .await
    }

    /// FDB entries with a remote destination on link `index`.
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::request("list fdb entries", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                Some(FdbEntry {
                    index,
                    mac: lladdr(m)?,
                    dst: dst(m)?,
                })
            })
            .collect())
    }
}

impl Netlink {
    /// Deletes one neighbour-table entry; one already gone is not an error.
    async fn delete_entry(&self, msg: NeighbourMessage, op: String) -> Result<()> {
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = NetlinkError::request(op, e);
                match err.errno() {
                    Some(libc::ENOENT) | Some(libc::ESRCH) => Ok(()),
                    _ => Err(err),
                }
            }
        }
    }
}
