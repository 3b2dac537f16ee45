//! One rtnetlink wrapper for links, addresses and routes. A [`Netlink`] is
//! bound to the network namespace it was opened in (the kernel fixes a
//! socket's namespace at creation), so a caller can hold one per namespace
//! and never has to switch the thread back and forth while talking to them.
//!
//! Every "add" here treats "already exists" as success so that callers can
//! re-apply a desired state idempotently.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
};

use crate::netns::{NetNs, NetNsError};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    #[error("netlink: {op}: {message}")]
    Request {
        op: String,
        message: String,
        errno: Option<i32>,
    },
}

impl NetlinkError {
    pub(crate) fn request(op: impl Into<String>, err: rtnetlink::Error) -> Self {
        let (message, errno) = match &err {
            rtnetlink::Error::NetlinkError(msg) => {
                let errno = -msg.raw_code();
                (
                    std::io::Error::from_raw_os_error(errno).to_string(),
                    Some(errno),
                )
            }
            other => (other.to_string(), None),
        };
        NetlinkError::Request {
            op: op.into(),
            message,
            errno,
        }
    }

    /// The kernel's errno for a failed request, if it gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { errno, .. } => *errno,
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

pub(crate) fn ignore_exists(res: Result<()>) -> Result<()> {
    match res {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// The parts of a link weft looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Vec<u8>>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub controller: Option<u32>,
    pub kind: Option<String>,
    /// VXLAN parameters, for a VXLAN device.
    pub vxlan: Option<VxlanInfo>,
    /// Its alias (`ip link set DEV alias TEXT`), a note for operators.
    pub alias: Option<String>,
}

/// What identifies a VXLAN device's tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    pub underlay: Option<u32>,
    pub learning: bool,
    pub gbp: bool,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            controller: None,
            kind: None,
            vxlan: None,
            alias: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::Address(a) => link.mac = Some(a.clone()),
                LinkAttribute::Mtu(m) => link.mtu = Some(*m),
                LinkAttribute::Controller(c) => link.controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(vxlan_info(v)),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// The MAC as the usual `aa:bb:cc:dd:ee:ff` text.
    pub fn mac_string(&self) -> Option<String> {
        self.mac.as_ref().map(|m| format_mac(m))
    }
}

fn vxlan_info(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo::default();
    for a in attrs {
        match a {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Local(ip) => info.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => info.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(i) => info.underlay = Some(*i),
            InfoVxlan::Learning(l) => info.learning = *l,
            InfoVxlan::Gbp => info.gbp = true,
            _ => {}
        }
    }
    info
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A route as weft programs it: the CNI route fields plus the output link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    pub dst: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
    /// Who owns the route (RTPROT_*); weft's agent tags its routes with
    /// [`WEFT_ROUTE_PROTOCOL`] so it can find and prune exactly its own.
    pub protocol: Option<u8>,
    /// The gateway is reachable on `oif` even without a covering route.
    pub onlink: bool,
}

/// The route protocol number weft's agent puts on the routes it owns.
pub const WEFT_ROUTE_PROTOCOL: u8 = 152;

impl Route {
    fn family_of(&self) -> AddressFamily {
        let v6 = match (self.dst, self.gateway) {
            (Some(d), _) => d.addr().is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            _ => false,
        };
        if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        }
    }

    fn to_message(&self) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.address_family = self.family_of();
        msg.header.protocol = RouteProtocol::from(self.protocol.unwrap_or(3 /* RTPROT_BOOT */));
        if self.onlink {
            msg.header.flags |= netlink_packet_route::route::RouteFlags::Onlink;
        }
        msg.header.kind = RouteType::Unicast;
        let table = self.table.unwrap_or(RouteHeader::RT_TABLE_MAIN as u32);
        if table < 256 {
            msg.header.table = table as u8;
        } else {
            msg.header.table = 0; // RT_TABLE_UNSPEC: the attribute carries it
        }
        msg.attributes.push(RouteAttribute::Table(table));
        msg.header.scope = match self.scope {
            Some(s) => RouteScope::from(s),
            None if self.gateway.is_none() => RouteScope::Link,
            None => RouteScope::Universe,
        };
        if let Some(dst) = self.dst {
            msg.header.destination_prefix_length = dst.prefix_len();
            msg.attributes
                .push(RouteAttribute::Destination(route_addr(dst.network())));
        }
        if let Some(gw) = self.gateway {
            msg.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
        }
        if let Some(oif) = self.oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(p) = self.priority {
            msg.attributes.push(RouteAttribute::Priority(p));
        }
        let mut metrics = Vec::new();
        if let Some(m) = self.mtu {
            metrics.push(RouteMetric::Mtu(m));
        }
        if let Some(m) = self.advmss {
            metrics.push(RouteMetric::Advmss(m));
        }
        if !metrics.is_empty() {
            msg.attributes.push(RouteAttribute::Metrics(metrics));
        }
        msg
    }

    fn from_message(msg: &RouteMessage) -> Option<Self> {
        let mut route = Route {
            table: Some(msg.header.table as u32),
            scope: Some(u8::from(msg.header.scope)),
            protocol: Some(u8::from(msg.header.protocol)),
            onlink: msg
                .header
                .flags
                .contains(netlink_packet_route::route::RouteFlags::Onlink),
            ..Default::default()
        };
        let mut dst_addr = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst_addr = ip_of(a),
                RouteAttribute::Gateway(a) => route.gateway = ip_of(a),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Priority(p) => route.priority = Some(*p),
                RouteAttribute::Table(t) => route.table = Some(*t),
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        match m {
                            RouteMetric::Mtu(v) => route.mtu = Some(*v),
                            RouteMetric::Advmss(v) => route.advmss = Some(*v),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let len = msg.header.destination_prefix_length;
        route.dst = match (dst_addr, msg.header.address_family) {
            (Some(a), _) => IpNet::new(a, len).ok(),
            (None, AddressFamily::Inet) => IpNet::new(IpAddr::from([0u8; 4]), 0).ok(),
            (None, AddressFamily::Inet6) => IpNet::new(IpAddr::from([0u16; 8]), 0).ok(),
            _ => return None,
        };
        Some(route)
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// What a new veth pair looks like: the host end joins `controller` (a
/// bridge), the peer is created directly inside `peer_netns` under its final
/// name, so no rename and no namespace move are needed.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub controller: u32,
    pub mtu: Option<u32>,
    pub peer_name: &'a str,
    pub peer_netns: &'a NetNs,
    pub peer_mac: Option<Vec<u8>>,
}

/// A VXLAN device as the agent wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay: Option<u32>,
    pub gbp: bool,
    pub mtu: Option<u32>,
    pub mac: Vec<u8>,
}

impl VxlanSpec {
    fn info(&self) -> VxlanInfo {
        VxlanInfo {
            vni: self.vni,
            port: self.port,
            local: Some(self.local),
            underlay: self.underlay,
            learning: false,
            gbp: self.gbp,
        }
    }
}

/// An rtnetlink connection bound to one network namespace. Must be created
/// inside a tokio runtime (it spawns its connection task there).
#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's current namespace.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A connection inside `ns`; the calling thread stays where it is.
    pub fn connect_in(ns: &NetNs) -> Result<Self> {
        ns.run_in(Self::connect)?
    }

    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.map(|m| Link::from_message(&m))),
            Err(e) => {
                let err = NetlinkError::request(format!("get link {name}"), e);
                if err.errno() == Some(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::request("list links", e))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Returns the bridge `name`, creating it (up, with `mtu` and `mac`) when
    /// missing. A bridge given a MAC keeps it; without one, Linux makes it
    /// follow the lowest port MAC, which changes as pods come and go.
    pub async fn ensure_bridge(&self, name: &str, mtu: Option<u32>, mac: Vec<u8>) -> Result<Link> {
        if let Some(link) = self.link(name).await? {
            if link.kind.as_deref() != Some("bridge") {
                return Err(NetlinkError::Request {
                    op: format!("use bridge {name}"),
                    message: format!(
                        "{name} exists but is a {} device, not a bridge; configure another bridge name",
                        link.kind.as_deref().unwrap_or("plain")
                    ),
                    errno: None,
                });
            }
            if !link.up {
                self.set_up(link.index).await?;
            }
            return Ok(link);
        }
        let mut msg = LinkBridge::new(name).up().address(mac);
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        let created = self.handle.link().add(msg.build()).execute().await;
        ignore_exists(
            created.map_err(|e| NetlinkError::request(format!("create bridge {name}"), e)),
        )?;
        self.link(name).await?.ok_or_else(|| NetlinkError::Request {
            op: format!("create bridge {name}"),
            message: "bridge vanished right after creation".into(),
            errno: None,
        })
    }

    pub async fn add_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name.to_string())
            .setns_by_fd(spec.peer_netns.raw_fd());
        if let Some(mtu) = spec.mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = &spec.peer_mac {
            peer = peer.address(mac.clone());
        }
        let mut host = LinkVeth::new(spec.host_name, spec.peer_name)
            .controller(spec.controller)
            .up();
        if let Some(mtu) = spec.mtu {
            host = host.mtu(mtu);
        }
        let mut msg = host.build();
        replace_veth_peer(&mut msg, peer.build());
        self.handle.link().add(msg).execute().await.map_err(|e| {
            NetlinkError::request(
                format!("create veth {} <-> {}", spec.host_name, spec.peer_name),
                e,
            )
        })
    }

    /// Creates a VXLAN device (learning off, up). An existing device of the
    /// same name with other tunnel parameters is replaced.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<Link> {
        if let Some(link) = self.link(&spec.name).await? {
            let want = spec.info();
            if link.vxlan.as_ref() == Some(&want) && spec.mtu.is_none_or(|m| link.mtu == Some(m)) {
                if !link.up {
                    self.set_up(link.index).await?;
                }
                return Ok(link);
            }
            self.delete_link(&spec.name).await?;
        }
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(false)
            .address(spec.mac.clone())
            .up();
        if let Some(dev) = spec.underlay {
            b = b.dev(dev);
        }
        b = match spec.local {
            IpAddr::V4(v4) => b.local(v4),
            IpAddr::V6(v6) => b.local6(v6),
        };
        if spec.gbp {
            b = b.gbp();
        }
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        let res = self.handle.link().add(b.build()).execute().await;
        ignore_exists(
            res.map_err(|e| NetlinkError::request(format!("create vxlan device {}", spec.name), e)),
        )?;
        self.link(&spec.name)
            .await?
            .ok_or_else(|| NetlinkError::Request {
                op: format!("create vxlan device {}", spec.name),
                message: "device vanished right after creation".into(),
                errno: None,
            })
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("set MTU {mtu} on link {index}"), e))
    }

    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkBridgePort::new(index).hairpin(on).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("set hairpin on link {index}"), e))
    }

    /// Sets link `index`'s alias to `alias`.
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).alias(alias).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("set the alias of link {index}"), e))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("set link {index} up"), e))
    }

    /// Takes link `index` out of service at once — down, off its bridge and
    /// renamed to `new_name` — without paying for its unregistration, which
    /// costs the kernel an RCU barrier (tens of milliseconds).
    pub async fn retire_link(&self, index: u32, new_name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index)
            .down()
            .nocontroller()
            .name(new_name.to_string())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("retire link {index} as {new_name}"), e))
    }

    /// Deletes the link `name`; returns false when it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let err = NetlinkError::request(format!("delete link {name}"), e);
                if err.errno() == Some(libc::ENODEV) {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let res = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("add address {addr} to link {index}"), e));
        ignore_exists(res)
    }

    /// Addresses on link `index` (both families).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::request(format!("list addresses of link {index}"), e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    pub async fn add_route(&self, route: &Route) -> Result<()> {
        let res = self
            .handle
            .route()
            .add(route.to_message())
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("add route {}", describe_route(route)), e));
        ignore_exists(res)
    }

    /// Adds `route` or replaces the route to the same destination.
    pub async fn replace_route(&self, route: &Route) -> Result<()> {
        self.handle
            .route()
            .add(route.to_message())
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetlinkError::request(format!("replace route {}", describe_route(route)), e)
            })
    }

    /// Deletes `route`; a route already gone is not an error.
    pub async fn delete_route(&self, route: &Route) -> Result<()> {
        let res = self
            .handle
            .route()
            .del(route.to_message())
            .execute()
            .await
            .map_err(|e| {
                NetlinkError::request(format!("delete route {}", describe_route(route)), e)
            });
        match res {
            Err(e) if e.errno() == Some(libc::ESRCH) || e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Routes of every table in one family.
    pub async fn routes(&self, v6: bool) -> Result<Vec<Route>> {
        let mut query = RouteMessage::default();
        query.header.address_family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::request("list routes", e))?;
        Ok(msgs.iter().filter_map(Route::from_message).collect())
    }
}

fn describe_route(r: &Route) -> String {
    let dst = r
        .dst
        .map(|d| d.to_string())
        .unwrap_or_else(|| "default".into());
    match r.gateway {
        Some(gw) => format!("{dst} via {gw}"),
        None => dst,
    }
}

/// rtnetlink's veth builder only names the peer; weft also places it in the
/// pod's namespace and sets its MTU and MAC in the same request.
fn replace_veth_peer(msg: &mut LinkMessage, peer: LinkMessage) {
    for attr in &mut msg.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos.iter_mut() {
                if let LinkInfo::Data(InfoData::Veth(v)) = info {
                    *v = InfoVeth::Peer(peer);
                    return;
                }
            }
            infos.push(LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))));
            return;
        }
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
}
