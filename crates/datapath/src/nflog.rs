//! Packets that nftables rules log with `log group N`, received over
//! nfnetlink_log (NETLINK_NETFILTER) in the calling thread's namespace,
//! through netlink-packet-netfilter's message types.
//!
//! This module owns binding one log group and reading what the kernel
//! sends for it: each packet's rule prefix and the addresses, protocol
//! and destination port of its IPv4 header. It copies only the headers,
//! never changes a rule and decides nothing about the packets.

use std::ffi::CString;
use std::net::Ipv4Addr;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, PacketNla, Timeout, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{constants::NETLINK_NETFILTER, Socket};

/// An IPv4 header and the ports after it: 20 bytes, up to 40 of options,
/// 4 of ports.
const COPY_RANGE: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("cannot open an nfnetlink_log socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot bind log group {group} (is another program reading it?): {source}")]
    Bind { group: u16, source: std::io::Error },
    #[error("reading logged packets failed: {0}")]
    Receive(std::io::Error),
}

/// The IPv4 flow of a logged packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The IP protocol number (6 TCP, 17 UDP, 132 SCTP, …).
    pub protocol: u8,
    /// For TCP, UDP and SCTP.
    pub dport: Option<u16>,
}

/// One logged packet: the prefix of the rule that logged it, and its flow
/// when it is IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub prefix: String,
    pub flow: Option<Flow>,
}

/// A bound log group.
pub struct LogGroup {
    socket: Socket,
    buffer: Vec<u8>,
}

impl LogGroup {
    /// Binds `group` for IPv4 packets, copying their headers, delivered
    /// within 100 ms.
    pub fn bind(group: u16) -> Result<LogGroup, NflogError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NflogError::Socket)?;
        socket.bind_auto().map_err(NflogError::Socket)?;
        let bind = |e| NflogError::Bind { group, source: e };
        let mut group_socket = LogGroup {
            socket,
            buffer: vec![0; 65536],
        };
        let timeout: Timeout = Duration::from_millis(100).into();
        group_socket
            .request(config_request(
                NetfilterProtoFamily::IPv4,
                0,
                vec![ConfigCmd::PfBind.into()],
            ))
            .map_err(bind)?;
        group_socket
            .request(config_request(
                NetfilterProtoFamily::IPv4,
                group,
                vec![
                    ConfigCmd::Bind.into(),
                    ConfigMode::new_packet(COPY_RANGE).into(),
                    timeout.into(),
                ],
            ))
            .map_err(bind)?;
        Ok(group_socket)
    }

    /// Sends one configuration request and reads its acknowledgement.
    fn request(&mut self, message: NetlinkMessage<NetfilterMessage>) -> std::io::Result<()> {
        let mut buf = vec![0; message.header.length as usize];
        message.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let size = self.socket.recv(&mut &mut self.buffer[..], 0)?;
        let reply = <NetlinkMessage<NetfilterMessage>>::deserialize(&self.buffer[..size])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        match reply.payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(()),
                Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
            },
            _ => Ok(()),
        }
    }

    /// Waits for the next batch of logged packets.
    pub fn receive(&mut self) -> Result<Vec<Logged>, NflogError> {
        let size = self
            .socket
            .recv(&mut &mut self.buffer[..], 0)
            .map_err(NflogError::Receive)?;
        Ok(parse_batch(&self.buffer[..size]))
    }
}

/// The logged packets in one datagram (messages that are not packets, or
/// cannot be read, are skipped).
fn parse_batch(mut bytes: &[u8]) -> Vec<Logged> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let Ok(message) = <NetlinkMessage<NetfilterMessage>>::deserialize(bytes) else {
            break;
        };
        let length = message.header.length as usize;
        if let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
            ..
        }) = &message.payload
        {
            out.push(logged(nlas));
        }
        // Messages are 4-byte aligned.
        let step = (length + 3) & !3;
        if length == 0 || step > bytes.len() {
            break;
        }
        bytes = &bytes[step..];
    }
    out
}

fn logged(nlas: &[PacketNla]) -> Logged {
    let mut prefix = String::new();
    let mut flow = None;
    for nla in nlas {
        match nla {
            PacketNla::Prefix(p) => prefix = cstring_text(p),
            PacketNla::Payload(payload) => flow = parse_ipv4(payload),
            _ => {}
        }
    }
    Logged { prefix, flow }
}

fn cstring_text(s: &CString) -> String {
    s.to_string_lossy().into_owned()
}

/// The flow of an IPv4 packet (`None` for anything else or too short).
pub fn parse_ipv4(packet: &[u8]) -> Option<Flow> {
    let first = *packet.first()?;
    if first >> 4 != 4 || packet.len() < 20 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    if header < 20 {
        return None;
    }
    let protocol = packet[9];
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    // Fragments after the first carry no ports.
    let first_fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff == 0;
    let dport = match protocol {
        6 | 17 | 132 if first_fragment => packet
            .get(header + 2..header + 4)
            .map(|p| u16::from_be_bytes([p[0], p[1]])),
        _ => None,
    };
    Some(Flow {
        src,
        dst,
        protocol,
        dport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(protocol: u8, ihl: u8, fragment: u16) -> Vec<u8> {
        let mut p = vec![0u8; usize::from(ihl) * 4 + 4];
        p[0] = 0x40 | ihl;
        p[6..8].copy_from_slice(&fragment.to_be_bytes());
        p[9] = protocol;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 3]);
        let ports = usize::from(ihl) * 4;
        p[ports..ports + 2].copy_from_slice(&40000u16.to_be_bytes());
        p[ports + 2..ports + 4].copy_from_slice(&5432u16.to_be_bytes());
        p
    }

    #[test]
    fn headers_give_addresses_protocol_and_port() {
        let flow = parse_ipv4(&ipv4(6, 5, 0)).unwrap();
        assert_eq!(flow.src, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(flow.dst, Ipv4Addr::new(10, 244, 2, 3));
        assert_eq!((flow.protocol, flow.dport), (6, Some(5432)));
        // Options move the ports; later fragments and ICMP have none.
        assert_eq!(parse_ipv4(&ipv4(17, 7, 0)).unwrap().dport, Some(5432));
        assert_eq!(parse_ipv4(&ipv4(6, 5, 0x0010)).unwrap().dport, None);
        assert_eq!(parse_ipv4(&ipv4(1, 5, 0)).unwrap().dport, None);
    }

    #[test]
    fn anything_else_is_no_flow_and_never_a_panic() {
        assert_eq!(parse_ipv4(&[]), None);
        assert_eq!(parse_ipv4(&[0x60; 40]), None, "IPv6");
        assert_eq!(parse_ipv4(&[0x45; 19]), None, "short");
        let mut truncated = ipv4(6, 5, 0);
        truncated.truncate(21);
        assert_eq!(parse_ipv4(&truncated).unwrap().dport, None);
        let mut long_header = ipv4(6, 5, 0);
        long_header[0] = 0x4f;
        assert_eq!(parse_ipv4(&long_header).unwrap().dport, None);
        assert!(parse_batch(&[1, 2, 3]).is_empty());
        let mut short_header = ipv4(6, 5, 0);
        short_header[0] = 0x44;
        assert_eq!(parse_ipv4(&short_header), None, "IHL below 5");
    }
}
