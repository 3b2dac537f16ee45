//! Connection tracking: deleting the conntrack entries of flows whose
//! Service endpoint went away, over ctnetlink (NETLINK_NETFILTER,
//! subsystem NFNL_SUBSYS_CTNETLINK), in the calling thread's namespace.
//!
//! Why: a UDP "connection" has no end the kernel can see, so a client that
//! keeps sending to a Service IP keeps hitting the DNAT decision of its
//! first packet — a dead endpoint — until the entry times out. Deleting the
//! entry makes the next packet go through the Service rules again.
//!
//! This module owns listing entries (one dump) and deleting exactly the
//! entries that match a caller's filter. It never creates or changes
//! entries, never flushes the table (a ctnetlink delete without a tuple
//! would; every request built here carries one), and never runs the
//! `conntrack` program.

use std::fmt;
use std::net::IpAddr;

use crate::nft::{self, Attrs, NfnlSocket};

/// The subsystem and message numbers of ctnetlink (linux/netfilter/nfnetlink_conntrack.h).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("cannot open a ctnetlink socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot list conntrack entries: {0}")]
    Dump(std::io::Error),
    #[error("cannot delete conntrack entry {flow}: {source}")]
    Delete {
        flow: String,
        source: std::io::Error,
    },
}

/// Which entries to delete. Every field that is set must match; `None`
/// matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowFilter {
    /// IPPROTO_UDP (17), IPPROTO_SCTP (132), IPPROTO_TCP (6), ...
    pub protocol: u8,
    /// The address the client sent to (e.g. a Service IP).
    pub original_dst: Option<IpAddr>,
    pub original_dst_port: Option<u16>,
    /// The address that answers (the endpoint, after DNAT).
    pub reply_src: Option<IpAddr>,
    /// The answering address is none of these (the endpoints a Service has
    /// now: what answers from elsewhere is stale); empty: no condition.
    pub reply_src_not_in: Vec<IpAddr>,
}

impl FlowFilter {
    fn matches(&self, e: &Entry) -> bool {
        e.orig.proto == Some(self.protocol)
            && self.original_dst.is_none_or(|d| e.orig.dst == Some(d))
            && self
                .original_dst_port
                .is_none_or(|p| e.orig.dst_port == Some(p))
            && self.reply_src.is_none_or(|s| e.reply.src == Some(s))
            && e.reply
                .src
                .is_none_or(|s| !self.reply_src_not_in.contains(&s))
    }

    /// The address families this filter can match: an entry's tuples are
    /// all of one family.
    fn families(&self) -> (bool, bool) {
        match (self.original_dst, self.reply_src) {
            (None, None) => (true, true),
            (Some(a), None) | (None, Some(a)) => (a.is_ipv4(), a.is_ipv6()),
            (Some(a), Some(b)) => (a.is_ipv4() && b.is_ipv4(), a.is_ipv6() && b.is_ipv6()),
        }
    }
}

/// Filters grouped by the destination port they name, so each entry is
/// checked against the few for its port: a full sync reconciles every UDP
/// Service port at once, and the table may hold many thousands of entries.
struct FiltersByPort<'a> {
    by_port: std::collections::HashMap<u16, Vec<&'a FlowFilter>>,
    any_port: Vec<&'a FlowFilter>,
}

impl<'a> FiltersByPort<'a> {
    fn new(filters: &'a [FlowFilter]) -> Self {
        let mut by_port: std::collections::HashMap<u16, Vec<&FlowFilter>> = Default::default();
        let mut any_port = Vec::new();
        for f in filters {
            match f.original_dst_port {
                Some(port) => by_port.entry(port).or_default().push(f),
                None => any_port.push(f),
            }
        }
        FiltersByPort { by_port, any_port }
    }

    fn any_matches(&self, e: &Entry) -> bool {
        let same_port = e
            .orig
            .dst_port
            .and_then(|p| self.by_port.get(&p))
            .into_iter()
            .flatten();
        same_port.chain(&self.any_port).any(|f| f.matches(e))
    }
}

/// Deletes every entry matching any filter, in the calling thread's
/// namespace; returns how many were deleted. Entries that vanish between
/// the dump and the delete (expired, or deleted by someone else) are not
/// errors and not counted.
pub fn delete_flows(filters: &[FlowFilter]) -> Result<usize, ConntrackError> {
    let (v4, v6) = filters.iter().fold((false, false), |(v4, v6), f| {
        let (a, b) = f.families();
        (v4 || a, v6 || b)
    });
    let family = match (v4, v6) {
        (false, false) => return Ok(0),
        (true, false) => libc::AF_INET as u8,
        (false, true) => libc::AF_INET6 as u8,
        // AF_UNSPEC dumps both families in one go.
        (true, true) => libc::AF_UNSPEC as u8,
    };
    let mut sock = NfnlSocket::open().map_err(ConntrackError::Socket)?;
    let entries = dump(&mut sock, family)?;
    let by_port = FiltersByPort::new(filters);
    let mut deleted = 0;
    for entry in entries.iter().filter(|e| by_port.any_matches(e)) {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        let msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
        let answer = sock
            .request(msg_type, flags, &delete_request(entry), |_, _| {})
            .map_err(|source| ConntrackError::Delete {
                flow: entry.to_string(),
                source,
            })?;
        match answer.errno {
            0 => {
                tracing::debug!(flow = %entry, "deleted conntrack entry");
                deleted += 1;
            }
            // Gone already, or its id changed: the tuple now belongs to a
            // new flow the filter was not computed for, so leave it.
            libc::ENOENT => {
                tracing::debug!(flow = %entry, "conntrack entry already gone");
            }
            errno => {
                return Err(ConntrackError::Delete {
                    flow: entry.to_string(),
                    source: std::io::Error::from_raw_os_error(errno),
                })
            }
        }
    }
    Ok(deleted)
}

/// All entries of `family` (AF_UNSPEC: all families), in one dump.
fn dump(sock: &mut NfnlSocket, family: u8) -> Result<Vec<Entry>, ConntrackError> {
    let msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    let mut entries = Vec::new();
    let mut bad = None;
    // A conntrack dump is never consistent (entries come and go while it
    // runs, and ctnetlink does not flag that): an entry created during the
    // dump is the caller's next call's business, so `interrupted` is moot.
    let answer = sock
        .request(msg_type, flags, &nft::nfgenmsg(family), |kind, msg| {
            // The kernel describes dumped entries as IPCTNL_MSG_CT_NEW.
            if kind != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW || bad.is_some() {
                return;
            }
            match parse_entry(msg) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) => {}
                Err(e) => bad = Some(e),
            }
        })
        .map_err(ConntrackError::Dump)?;
    if let Some(e) = bad {
        return Err(ConntrackError::Dump(e));
    }
    if answer.errno != 0 {
        return Err(ConntrackError::Dump(std::io::Error::from_raw_os_error(
            answer.errno,
        )));
    }
    Ok(entries)
}

/// One direction of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
}

/// One conntrack entry, as far as filtering and deleting it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// AF_INET or AF_INET6: the delete request must name it, the kernel
    /// parses the tuple's addresses by it.
    family: u8,
    orig: Tuple,
    reply: Tuple,
    /// CTA_TUPLE_ORIG exactly as dumped. Sent back verbatim on delete, so
    /// every field the kernel keys the entry on (ICMP id/type/code, a
    /// per-direction zone) is there without this module understanding it.
    raw_orig: Vec<u8>,
    /// CTA_ZONE (big-endian u16) when the entry is not in the default zone.
    zone: Option<[u8; 2]>,
    /// CTA_ID (big-endian u32): the kernel refuses the delete when the
    /// entry under the tuple is no longer this one.
    id: Option<[u8; 4]>,
}

impl fmt::Display for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = |ip: Option<IpAddr>, port: Option<u16>| {
            let ip = ip.map_or("?".to_string(), |ip| match ip {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            });
            match port {
                Some(p) => format!("{ip}:{p}"),
                None => ip,
            }
        };
        let proto = match self.proto {
            Some(6) => "tcp".to_string(),
            Some(17) => "udp".to_string(),
            Some(132) => "sctp".to_string(),
            Some(p) => format!("proto {p}"),
            None => "proto ?".to_string(),
        };
        write!(
            f,
            "{proto} {} -> {}",
            end(self.src, self.src_port),
            end(self.dst, self.dst_port)
        )
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (reply from ", self.orig)?;
        match self.reply.src {
            Some(ip) => write!(f, "{ip})"),
            None => write!(f, "?)"),
        }
    }
}

/// Parses one dumped entry (the payload after the netlink header). An entry
/// without both tuples cannot be matched or deleted and yields `None`; bytes
/// that do not frame as attributes are an error.
fn parse_entry(msg: &[u8]) -> std::io::Result<Option<Entry>> {
    let family = *msg.first().ok_or_else(|| nft::malformed("empty message"))?;
    let attrs = msg
        .get(nft::NFGENMSG_LEN..)
        .ok_or_else(|| nft::malformed("short nfgenmsg"))?;
    let (mut orig, mut reply, mut raw_orig, mut zone, mut id) = (None, None, None, None, None);
    for attr in Attrs::new(attrs) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_ORIG => {
                orig = Some(parse_tuple(value)?);
                raw_orig = Some(value.to_vec());
            }
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(value)?),
            CTA_ZONE => zone = value.try_into().ok(),
            CTA_ID => id = value.try_into().ok(),
            _ => {}
        }
    }
    Ok(match (orig, reply, raw_orig) {
        (Some(orig), Some(reply), Some(raw_orig)) => Some(Entry {
            family,
            orig,
            reply,
            raw_orig,
            zone,
            id,
        }),
        _ => None,
    })
}

fn parse_tuple(buf: &[u8]) -> std::io::Result<Tuple> {
    let mut t = Tuple::default();
    for attr in Attrs::new(buf) {
        match attr? {
            (CTA_TUPLE_IP, ips) => {
                for ip in Attrs::new(ips) {
                    let (kind, v) = ip?;
                    let addr = match v.len() {
                        4 => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
                        _ => None,
                    };
                    match kind {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => t.src = addr,
                        CTA_IP_V4_DST | CTA_IP_V6_DST => t.dst = addr,
                        _ => {}
                    }
                }
            }
            (CTA_TUPLE_PROTO, proto) => {
                for p in Attrs::new(proto) {
                    let (kind, v) = p?;
                    // Ports travel in network byte order.
                    let port = <[u8; 2]>::try_from(v).ok().map(u16::from_be_bytes);
                    match kind {
                        CTA_PROTO_NUM => t.proto = v.first().copied(),
                        CTA_PROTO_SRC_PORT => t.src_port = port,
                        CTA_PROTO_DST_PORT => t.dst_port = port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(t)
}

/// The payload of the IPCTNL_MSG_CT_DELETE request for `entry`.
fn delete_request(entry: &Entry) -> Vec<u8> {
    let mut payload = nft::nfgenmsg(entry.family);
    nft::push_attr(
        &mut payload,
        CTA_TUPLE_ORIG | libc::NLA_F_NESTED as u16,
        &entry.raw_orig,
    );
    if let Some(id) = entry.id {
        nft::push_attr(&mut payload, CTA_ID, &id);
    }
    if let Some(zone) = entry.zone {
        nft::push_attr(&mut payload, CTA_ZONE, &zone);
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{push_attr, push_nested};

    /// The header of an attribute, written out by hand (native byte order,
    /// as netlink uses).
    fn hdr(len: u16, kind: u16) -> Vec<u8> {
        [len.to_ne_bytes(), kind.to_ne_bytes()].concat()
    }

    /// A dumped IPv4 UDP entry laid out byte by byte as the kernel sends it:
    /// client 198.18.250.1:12345 -> Service 10.96.0.10:53, answered by the
    /// endpoint 10.244.1.7:5353.
    fn kernel_v4_entry() -> Vec<u8> {
        const N: u16 = 0x8000; // NLA_F_NESTED
        let mut m = vec![libc::AF_INET as u8, 0, 0, 0];
        let tuple = |src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16| {
            let mut t = hdr(20, CTA_TUPLE_IP | N);
            t.extend(hdr(8, CTA_IP_V4_SRC));
            t.extend(src);
            t.extend(hdr(8, CTA_IP_V4_DST));
            t.extend(dst);
            t.extend(hdr(28, CTA_TUPLE_PROTO | N));
            t.extend(hdr(5, CTA_PROTO_NUM));
            t.extend([17, 0, 0, 0]); // value + 3 bytes padding
            t.extend(hdr(6, CTA_PROTO_SRC_PORT));
            t.extend(sport.to_be_bytes());
            t.extend([0, 0]);
            t.extend(hdr(6, CTA_PROTO_DST_PORT));
            t.extend(dport.to_be_bytes());
            t.extend([0, 0]);
            t
        };
        let orig = tuple([198, 18, 250, 1], [10, 96, 0, 10], 12345, 53);
        let reply = tuple([10, 244, 1, 7], [198, 18, 250, 1], 5353, 12345);
        m.extend(hdr(4 + orig.len() as u16, CTA_TUPLE_ORIG | N));
        m.extend(&orig);
        m.extend(hdr(4 + reply.len() as u16, CTA_TUPLE_REPLY | N));
        m.extend(&reply);
        m.extend(hdr(8, 3 /* CTA_STATUS */));
        m.extend(8u32.to_be_bytes());
        m.extend(hdr(8, CTA_ID));
        m.extend([0xde, 0xad, 0xbe, 0xef]);
        m
    }

    fn udp(dst: Option<&str>, port: Option<u16>, reply_src: Option<&str>) -> FlowFilter {
        FlowFilter {
            protocol: 17,
            original_dst: dst.map(|d| d.parse().unwrap()),
            original_dst_port: port,
            reply_src: reply_src.map(|d| d.parse().unwrap()),
            reply_src_not_in: Vec::new(),
        }
    }

    #[test]
    fn filters_grouped_by_port_match_as_the_list_does() {
        let e = parse_entry(&kernel_v4_entry()).unwrap().unwrap();
        let filters = [
            udp(Some("10.96.0.11"), Some(53), None),
            udp(Some("10.96.0.10"), Some(54), None),
        ];
        assert!(!FiltersByPort::new(&filters).any_matches(&e));
        let hit = [filters[0].clone(), udp(Some("10.96.0.10"), Some(53), None)];
        assert!(FiltersByPort::new(&hit).any_matches(&e));
        assert!(FiltersByPort::new(&[udp(None, None, Some("10.244.1.7"))]).any_matches(&e));
    }

    #[test]
    fn a_kernel_entry_is_parsed() {
        let e = parse_entry(&kernel_v4_entry()).unwrap().unwrap();
        assert_eq!(e.family, libc::AF_INET as u8);
        assert_eq!(
            e.orig,
            Tuple {
                src: Some("198.18.250.1".parse().unwrap()),
                dst: Some("10.96.0.10".parse().unwrap()),
                proto: Some(17),
                src_port: Some(12345),
                dst_port: Some(53),
            }
        );
        assert_eq!(e.reply.src, Some("10.244.1.7".parse().unwrap()));
        assert_eq!(e.reply.src_port, Some(5353));
        assert_eq!(e.id, Some([0xde, 0xad, 0xbe, 0xef]));
        assert_eq!(e.zone, None);
        assert_eq!(
            e.to_string(),
            "udp 198.18.250.1:12345 -> 10.96.0.10:53 (reply from 10.244.1.7)"
        );
    }

    #[test]
    fn filters_match_on_every_field_they_set() {
        let e = parse_entry(&kernel_v4_entry()).unwrap().unwrap();
        assert!(udp(None, None, None).matches(&e));
        assert!(udp(Some("10.96.0.10"), Some(53), Some("10.244.1.7")).matches(&e));
        assert!(udp(None, None, Some("10.244.1.7")).matches(&e));
        assert!(!udp(Some("10.96.0.11"), None, None).matches(&e));
        assert!(!udp(Some("10.96.0.10"), Some(54), None).matches(&e));
        assert!(!udp(None, None, Some("10.244.1.8")).matches(&e));
        // The client's own address is not the endpoint.
        assert!(!udp(None, None, Some("198.18.250.1")).matches(&e));
        // Answered by none of the current endpoints: stale.
        let not_in = |ips: &[&str]| FlowFilter {
            reply_src_not_in: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ..udp(Some("10.96.0.10"), Some(53), None)
        };
        assert!(not_in(&["10.244.1.8"]).matches(&e));
        assert!(not_in(&[]).matches(&e));
        assert!(!not_in(&["10.244.1.8", "10.244.1.7"]).matches(&e));
        let tcp = FlowFilter {
            protocol: 6,
            ..udp(None, None, None)
        };
        assert!(!tcp.matches(&e));
    }

    #[test]
    fn the_delete_request_echoes_the_original_tuple_with_id_and_zone() {
        let mut e = parse_entry(&kernel_v4_entry()).unwrap().unwrap();
        e.zone = Some(7u16.to_be_bytes());
        let req = delete_request(&e);
        assert_eq!(req[0], libc::AF_INET as u8);
        let attrs: Vec<_> = Attrs::new(&req[4..]).collect::<Result<_, _>>().unwrap();
        let kinds: Vec<u16> = attrs.iter().map(|a| a.0).collect();
        assert_eq!(kinds, vec![CTA_TUPLE_ORIG, CTA_ID, CTA_ZONE]);
        assert_eq!(parse_tuple(attrs[0].1).unwrap(), e.orig);
        assert_eq!(attrs[0].1, &e.raw_orig[..]);
        assert_eq!(attrs[1].1, &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(attrs[2].1, &[0, 7]);
        // The nested flag is set on the tuple (the kernel accepts both, but
        // that is what it sends itself).
        let flags = u16::from_ne_bytes([req[6], req[7]]);
        assert_ne!(flags & libc::NLA_F_NESTED as u16, 0);
    }

    #[test]
    fn an_ipv6_entry_is_parsed() {
        fn tuple(b: &mut Vec<u8>, src: &str, dst: &str, sport: u16, dport: u16) {
            let s: std::net::Ipv6Addr = src.parse().unwrap();
            let d: std::net::Ipv6Addr = dst.parse().unwrap();
            push_nested(b, CTA_TUPLE_IP, |b| {
                push_attr(b, CTA_IP_V6_SRC, &s.octets());
                push_attr(b, CTA_IP_V6_DST, &d.octets());
            });
            push_nested(b, CTA_TUPLE_PROTO, |b| {
                push_attr(b, CTA_PROTO_NUM, &[132]);
                push_attr(b, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
                push_attr(b, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
            });
        }
        let mut m = vec![libc::AF_INET6 as u8, 0, 0, 0];
        push_nested(&mut m, CTA_TUPLE_ORIG, |b| {
            tuple(b, "2001:db8::1", "fd00::10", 4000, 38412)
        });
        push_nested(&mut m, CTA_TUPLE_REPLY, |b| {
            tuple(b, "fd00:1::7", "2001:db8::1", 38412, 4000)
        });
        push_attr(&mut m, CTA_ZONE, &3u16.to_be_bytes());
        let e = parse_entry(&m).unwrap().unwrap();
        assert_eq!(e.orig.dst, Some("fd00::10".parse().unwrap()));
        assert_eq!(e.orig.dst_port, Some(38412));
        assert_eq!(e.reply.src, Some("fd00:1::7".parse().unwrap()));
        assert_eq!(e.zone, Some([0, 3]));
        assert_eq!(e.id, None);
        let f = FlowFilter {
            protocol: 132,
            original_dst: Some("fd00::10".parse().unwrap()),
            original_dst_port: Some(38412),
            reply_src: Some("fd00:1::7".parse().unwrap()),
            reply_src_not_in: Vec::new(),
        };
        assert!(f.matches(&e));
        // An IPv4 filter never matches an IPv6 entry.
        assert!(!udp(Some("10.96.0.10"), None, None).matches(&e));
    }

    #[test]
    fn entries_without_both_tuples_are_skipped() {
        let mut m = vec![libc::AF_INET as u8, 0, 0, 0];
        push_attr(&mut m, CTA_ID, &[0, 0, 0, 1]);
        assert_eq!(parse_entry(&m).unwrap(), None);
    }

    #[test]
    fn truncated_entries_are_errors_or_skipped_never_panics() {
        let m = kernel_v4_entry();
        for cut in 0..m.len() {
            // A cut inside an attribute is an error; a cut on a boundary
            // loses the reply tuple or the trailing attributes.
            match parse_entry(&m[..cut]) {
                Err(_) | Ok(None) => {}
                Ok(Some(e)) => {
                    assert!(cut >= m.len() - 16, "entry from {cut} bytes: {e}");
                }
            }
        }
        // Garbage never panics either.
        for len in 0..64u8 {
            let junk: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            let _ = parse_entry(&junk);
        }
    }

    #[test]
    fn filters_choose_the_dumped_families() {
        assert_eq!(udp(Some("10.0.0.1"), None, None).families(), (true, false));
        assert_eq!(udp(None, None, Some("fd00::1")).families(), (false, true));
        assert_eq!(udp(None, Some(53), None).families(), (true, true));
        assert_eq!(
            udp(Some("10.0.0.1"), None, Some("fd00::1")).families(),
            (false, false)
        );
    }
}
