//! `conntrack::delete_flows` against a real kernel: a client namespace with
//! connection tracking switched on (by an nft rule that uses `ct`) sends
//! UDP to a server namespace over a veth, directly and through a DNATed
//! "Service" address, and the test deletes exactly the matching entries.
//! All addresses live in the two namespaces the test creates.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};

use common::{ip, Namespaces};
use weft_datapath::conntrack::{delete_flows, FlowFilter};
use weft_datapath::{nft, NetNs};

const PORT: u16 = 40053;
const SERVICE: &str = "198.18.250.100";
const SERVICE_PORT: u16 = 53;

/// Conntrack entries of the namespace, as the kernel's procfs view lists
/// them. /proc/thread-self, not /proc/net: /proc/net follows the *process's*
/// (main thread's) namespace, not the namespace this thread entered.
fn entries(ns: &NetNs) -> Vec<String> {
    ns.run_in(|| std::fs::read_to_string("/proc/thread-self/net/nf_conntrack"))
        .unwrap()
        .expect("reading nf_conntrack (CONFIG_NF_CONNTRACK_PROCFS)")
        .lines()
        .filter(|l| l.contains(" udp "))
        .map(String::from)
        .collect()
}

fn count(entries: &[String], family: &str, needle: &str) -> usize {
    entries
        .iter()
        .filter(|l| l.starts_with(family) && l.contains(needle))
        .count()
}

fn udp(dst: Option<&str>, port: Option<u16>, reply_src: Option<&str>) -> FlowFilter {
    FlowFilter {
        protocol: libc::IPPROTO_UDP as u8,
        original_dst: dst.map(|d| d.parse().unwrap()),
        original_dst_port: port,
        reply_src: reply_src.map(|d| d.parse().unwrap()),
        reply_src_not_in: Vec::new(),
    }
}

fn delete_in(ns: &NetNs, filters: &[FlowFilter]) -> usize {
    ns.run_in(|| delete_flows(filters))
        .unwrap()
        .unwrap_or_else(|e| panic!("delete_flows {filters:?}: {e}"))
}

#[test]
fn deletes_exactly_the_matching_udp_flows() {
    let mut nss = Namespaces::new("ct");
    let (c_name, client) = nss.add("c");
    let (s_name, server) = nss.add("s");
    ip(
        &c_name,
        &[
            "link", "add", "wct0", "type", "veth", "peer", "name", "wct1", "netns", &s_name,
        ],
    );
    for (ns, dev, v4, v6) in [
        (&c_name, "wct0", "198.18.250.1/30", "2001:db8:250::1/64"),
        (&s_name, "wct1", "198.18.250.2/30", "2001:db8:250::2/64"),
    ] {
        ip(ns, &["addr", "add", v4, "dev", dev]);
        ip(ns, &["addr", "add", v6, "dev", dev, "nodad"]);
        ip(ns, &["link", "set", dev, "up"]);
    }
    // The Service address is routed onto the veth; DNAT in the output hook
    // sends it to the server, as kube-proxy's rules would.
    ip(
        &c_name,
        &["route", "add", &format!("{SERVICE}/32"), "dev", "wct0"],
    );
    // Conntrack only runs in a namespace once something there needs it; a
    // `ct` expression (and NAT) is such a user.
    nft::apply(
        &format!(
            "table inet wdt {{
               chain out {{ type filter hook output priority 0; ct state new accept; }}
             }}
             table ip wdtnat {{
               chain out {{ type nat hook output priority -100;
                 ip daddr {SERVICE} udp dport {SERVICE_PORT} dnat to 198.18.250.2:{PORT}; }}
             }}"
        ),
        Some(&client),
    )
    .unwrap();

    let listeners: Vec<UdpSocket> = ["198.18.250.2", "[2001:db8:250::2]"]
        .iter()
        .map(|a| {
            server
                .run_in(|| UdpSocket::bind(format!("{a}:{PORT}")))
                .unwrap()
                .unwrap()
        })
        .collect();
    let targets: [SocketAddr; 3] = [
        format!("198.18.250.2:{PORT}").parse().unwrap(),
        format!("[2001:db8:250::2]:{PORT}").parse().unwrap(),
        format!("{SERVICE}:{SERVICE_PORT}").parse().unwrap(),
    ];
    for target in targets {
        let any: SocketAddr = match target.ip() {
            IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
            IpAddr::V6(_) => "[::]:0".parse().unwrap(),
        };
        client
            .run_in(|| UdpSocket::bind(any)?.send_to(b"hello", target))
            .unwrap()
            .unwrap_or_else(|e| panic!("sending to {target}: {e}"));
    }
    // Both direct datagrams and the DNATed one arrive: the flows are real.
    let mut buf = [0u8; 16];
    listeners[0].recv_from(&mut buf).unwrap();
    listeners[0].recv_from(&mut buf).unwrap();
    listeners[1].recv_from(&mut buf).unwrap();

    let before = entries(&client);
    let direct_v4 = "dst=198.18.250.2 sport=";
    let service = format!("dst={SERVICE} ");
    assert_eq!(count(&before, "ipv4", direct_v4), 1, "{before:#?}");
    assert_eq!(count(&before, "ipv4", &service), 1, "{before:#?}");
    assert_eq!(
        count(&before, "ipv6", &format!("dport={PORT} ")),
        1,
        "{before:#?}"
    );

    // Nothing matches: another port, another protocol, another endpoint,
    // an address of the wrong family for the entry.
    let tcp = FlowFilter {
        protocol: libc::IPPROTO_TCP as u8,
        ..udp(Some("198.18.250.2"), Some(PORT), None)
    };
    let misses = [
        udp(Some("198.18.250.2"), Some(PORT + 1), None),
        tcp,
        udp(Some(SERVICE), Some(SERVICE_PORT), Some("198.18.250.3")),
        udp(None, None, Some("2001:db8:250::3")),
    ];
    assert_eq!(delete_in(&client, &misses), 0);
    assert_eq!(entries(&client).len(), before.len(), "nothing may go");

    // The Service flow: matched by the Service address and port and the
    // endpoint that answers (the DNAT target), as kube-proxy does when the
    // endpoint goes away.
    let service_flow = udp(Some(SERVICE), Some(SERVICE_PORT), Some("198.18.250.2"));
    assert_eq!(delete_in(&client, std::slice::from_ref(&service_flow)), 1);
    let after = entries(&client);
    assert_eq!(count(&after, "ipv4", &service), 0, "{after:#?}");
    assert_eq!(count(&after, "ipv4", direct_v4), 1, "{after:#?}");

    // One call, two filters, two families: the direct IPv4 and IPv6 flows.
    let both = [
        udp(Some("198.18.250.2"), Some(PORT), Some("198.18.250.2")),
        udp(None, Some(PORT), Some("2001:db8:250::2")),
    ];
    assert_eq!(delete_in(&client, &both), 2);
    let after = entries(&client);
    assert_eq!(count(&after, "ipv4", direct_v4), 0, "{after:#?}");
    assert_eq!(
        count(&after, "ipv6", &format!("dport={PORT} ")),
        0,
        "{after:#?}"
    );

    // Gone is gone: deleting again finds nothing, and is no error.
    assert_eq!(delete_in(&client, &both), 0);
    assert_eq!(delete_in(&client, &[service_flow]), 0);
    assert_eq!(delete_in(&client, &[]), 0);
}

#[test]
fn an_empty_table_deletes_nothing() {
    let mut nss = Namespaces::new("ct0");
    let (_, ns) = nss.add("x");
    // No conntrack user in this namespace: the dump is empty, not an error.
    assert_eq!(delete_in(&ns, &[udp(None, None, None)]), 0);
}
