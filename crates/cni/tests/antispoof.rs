//! Anti-spoofing: a pod sends only as itself. Frames are forged the way a
//! hostile pod would (AF_PACKET, from inside the pod's namespace) and must
//! not arrive, while the same frames with the pod's own addresses do. Each
//! attack is repeated once the rules are gone (table `bridge weft-cni`
//! deleted), where it must succeed — so these tests can fail. Every
//! namespace is the test's own and removed on drop.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Node;
use serde_json::{json, Value};
use weft_datapath::NetNs;

/// One attached pod as its ADD result describes it.
struct Pod {
    ns: PathBuf,
    veth: String,
    mac: [u8; 6],
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

fn dual_stack(node: &Node) -> Value {
    node.conf(
        json!({"ipam": {"ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": "fd88::/64"}]]}}),
    )
}

fn add_pod(node: &mut Node, tag: &str, conf: &Value) -> Pod {
    let ns = node.pod(tag);
    let r = node.add(tag, &ns, conf);
    let addr = |v6: bool| {
        r.json["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap())
            .map(|a| a.parse::<IpAddr>().unwrap())
            .find(|a| a.is_ipv6() == v6)
            .unwrap()
    };
    let (IpAddr::V4(v4), IpAddr::V6(v6)) = (addr(false), addr(true)) else {
        unreachable!("addresses sorted by family above")
    };
    Pod {
        ns,
        veth: r.json["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .to_string(),
        mac: parse_mac(r.json["interfaces"][2]["mac"].as_str().unwrap()),
        v4,
        v6,
    }
}

fn parse_mac(s: &str) -> [u8; 6] {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// Deletes the node's anti-spoofing table: the control case.
fn remove_rules(node: &Node) {
    let ok = node
        .ns
        .command("nft")
        .args(["delete", "table", "bridge", "weft-cni"])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Whether the node's anti-spoofing sets hold any element of `veth`.
fn guarded(node: &Node, veth: &str) -> bool {
    let out = node
        .ns
        .command("nft")
        .args(["list", "table", "bridge", "weft-cni"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("\"{veth}\""))
}

/// Whether `veth`'s elements are gone within 100 ms: removal lets them
/// expire, which takes effect on the kernel's next tick (4 ms at HZ=250).
fn unguarded_soon(node: &Node, veth: &str) -> bool {
    for _ in 0..10 {
        if !guarded(node, veth) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Sends one raw Ethernet frame out of `eth0` inside `ns`.
fn send_frame(ns: &Path, frame: &[u8]) {
    NetNs::open(ns)
        .unwrap()
        .run_in(|| {
            // SAFETY: plain socket calls on a fresh fd closed below; the
            // address structure is fully initialised.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
                addr.sll_halen = 6;
                addr.sll_addr[..6].copy_from_slice(&frame[..6]);
                let sent = libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                assert_eq!(sent, frame.len() as isize, "sendto: {err}");
            }
        })
        .unwrap();
}

/// A UDP socket bound inside `ns`.
fn listen(ns: &Path, addr: SocketAddr) -> UdpSocket {
    NetNs::open(ns)
        .unwrap()
        .run_in(|| UdpSocket::bind(addr))
        .unwrap()
        .unwrap()
}

/// Whether `payload` arrives on `sock` within `wait`.
fn arrives(sock: &UdpSocket, payload: &[u8], wait: Duration) -> bool {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    while let Ok(n) = sock.recv(&mut buf) {
        if &buf[..n] == payload {
            return true;
        }
    }
    false
}

const SHORT: Duration = Duration::from_millis(400);
const LONG: Duration = Duration::from_secs(2);
const PORT: u16 = 7070;

// ---- frames ----

fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    [&dst[..], &src[..], &ethertype.to_be_bytes(), payload].concat()
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_header(dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    [
        &40000u16.to_be_bytes()[..],
        &dport.to_be_bytes(),
        &len.to_be_bytes(),
        &[0, 0],
        payload,
    ]
    .concat()
}

fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let udp = udp_header(PORT, payload); // checksum 0: none, allowed over IPv4
    let total = (20 + udp.len()) as u16;
    let mut ip = [
        &[0x45, 0][..],
        &total.to_be_bytes(),
        &[0, 0, 0x40, 0, 64, 17, 0, 0],
        &src.octets(),
        &dst.octets(),
    ]
    .concat();
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    [ip, udp].concat()
}

/// An IPv6 packet whose upper-layer checksum (at `sum_at` in `upper`) is
/// filled in.
fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next: u8,
    hops: u8,
    mut upper: Vec<u8>,
    sum_at: usize,
) -> Vec<u8> {
    let len = upper.len() as u32;
    let pseudo = [
        &src.octets()[..],
        &dst.octets(),
        &len.to_be_bytes(),
        &[0, 0, 0, next],
        &upper,
    ]
    .concat();
    let sum = checksum(&pseudo);
    upper[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
    [
        &[0x60, 0, 0, 0][..],
        &(len as u16).to_be_bytes(),
        &[next, hops],
        &src.octets(),
        &dst.octets(),
        &upper,
    ]
    .concat()
}

fn ipv6_udp(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    ipv6(src, dst, 17, 64, udp_header(PORT, payload), 6)
}

/// A gratuitous ARP request: `mac` claims `ip`.
fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let arp = [
        &[0, 1, 0x08, 0, 6, 4, 0, 1][..],
        &mac,
        &ip.octets(),
        &[0; 6],
        &ip.octets(),
    ]
    .concat();
    ether([0xff; 6], mac, 0x0806, &arp)
}

/// An unsolicited neighbour advertisement (override flag) from `src`
/// telling all nodes that `target` is at `mac`.
fn unsolicited_na(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let icmp = [
        &[136, 0, 0, 0, 0x20, 0, 0, 0][..],
        &target.octets(),
        &[2, 1],
        &mac,
    ]
    .concat();
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let packet = ipv6(src, all_nodes, 58, 255, icmp, 2);
    ether([0x33, 0x33, 0, 0, 0, 1], mac, 0x86dd, &packet)
}

/// The link-local address the kernel gave `eth0` in `ns`; it comes with
/// the carrier, which the kernel reports asynchronously (up to 1 s).
fn kernel_link_local(ns: &Path) -> Ipv6Addr {
    let name = ns.file_name().unwrap().to_str().unwrap();
    let args = ["-j", "-6", "addr", "show", "dev", "eth0", "scope", "link"];
    for _ in 0..30 {
        let v: Value = serde_json::from_str(&Node::ip(name, &args)).unwrap_or(Value::Null);
        let infos = v[0]["addr_info"].as_array().cloned().unwrap_or_default();
        // Entries filtered out by `scope link` show as empty objects.
        if let Some(addr) = infos.iter().find_map(|i| i["local"].as_str()) {
            return addr.parse().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("eth0 in {name} got no link-local address within 3 s");
}

/// The MAC the node's neighbour table holds for `ip` on the bridge.
fn node_neighbour(node: &Node, ip: IpAddr) -> String {
    let out = node.node_ip(&["-j", "neigh", "show", "to", &ip.to_string(), "dev", "wtbr0"]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v[0]["lladdr"].as_str().unwrap_or_default().to_string()
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---- tests ----

#[test]
fn forged_source_addresses_are_dropped_and_own_ones_delivered() {
    let mut node = Node::new("spoof-ip");
    let conf = dual_stack(&node);
    let a = add_pod(&mut node, "a", &conf);
    let b = add_pod(&mut node, "b", &conf);
    let c = add_pod(&mut node, "c", &conf);
    let rx4 = listen(&b.ns, SocketAddr::new(b.v4.into(), PORT));
    let rx6 = listen(&b.ns, SocketAddr::new(b.v6.into(), PORT));
    let foreign4: Ipv4Addr = "198.18.7.7".parse().unwrap();
    let foreign6: Ipv6Addr = "2001:db8::7".parse().unwrap();
    // Every forged frame goes from a to b, UDP to PORT, and must not arrive.
    let forged_mac = [0x02, 0xde, 0xad, 0xbe, 0xef, 0x01];
    let forgeries: [(&str, [u8; 6], IpAddr); 5] = [
        ("IPv4 as another pod", a.mac, c.v4.into()),
        ("IPv4 from a foreign address", a.mac, foreign4.into()),
        ("IPv6 as another pod", a.mac, c.v6.into()),
        ("IPv6 from a foreign address", a.mac, foreign6.into()),
        ("a foreign source MAC", forged_mac, a.v4.into()),
    ];
    let own: [(&str, IpAddr); 3] = [
        ("own IPv4", a.v4.into()),
        ("own IPv6", a.v6.into()),
        ("link-local", kernel_link_local(&a.ns).into()),
    ];
    let delivered = |msg: &str, mac: [u8; 6], src: IpAddr, wait: Duration| {
        let (frame, rx) = match src {
            IpAddr::V4(v4) => (
                ether(b.mac, mac, 0x0800, &ipv4_udp(v4, b.v4, msg.as_bytes())),
                &rx4,
            ),
            IpAddr::V6(v6) => (
                ether(b.mac, mac, 0x86dd, &ipv6_udp(v6, b.v6, msg.as_bytes())),
                &rx6,
            ),
        };
        send_frame(&a.ns, &frame);
        arrives(rx, msg.as_bytes(), wait)
    };
    for (what, mac, src) in forgeries {
        assert!(!delivered(what, mac, src, SHORT), "{what} delivered");
    }
    for (what, src) in own {
        assert!(
            delivered(what, a.mac, src, LONG),
            "the pod's {what} packet was dropped"
        );
    }
    // Control: without the rules the very same forgeries arrive.
    remove_rules(&node);
    for (what, mac, src) in forgeries {
        let msg = format!("{what}, unguarded");
        assert!(
            delivered(&msg, mac, src, LONG),
            "{msg}: not delivered even so"
        );
    }
}

#[test]
fn arp_and_neighbour_advertisements_cannot_claim_a_neighbours_address() {
    let mut node = Node::new("spoof-nd");
    let conf = dual_stack(&node);
    let attacker = add_pod(&mut node, "a", &conf);
    let victim = add_pod(&mut node, "v", &conf);
    let node_path = weft_datapath::netns::named_path(&node.name);
    assert!(Node::ping(&node_path, &victim.v4.to_string()));
    assert!(Node::ping(&node_path, &victim.v6.to_string()));
    let victim_mac = mac_text(victim.mac);
    let attacker_mac = mac_text(attacker.mac);
    assert_eq!(node_neighbour(&node, victim.v4.into()), victim_mac);
    assert_eq!(node_neighbour(&node, victim.v6.into()), victim_mac);

    let attack = || {
        send_frame(&attacker.ns, &gratuitous_arp(attacker.mac, victim.v4));
        let from = kernel_link_local(&attacker.ns);
        send_frame(&attacker.ns, &unsolicited_na(attacker.mac, from, victim.v6));
        std::thread::sleep(Duration::from_millis(300));
    };
    attack();
    assert_eq!(
        node_neighbour(&node, victim.v4.into()),
        victim_mac,
        "a gratuitous ARP took the victim's IPv4 address"
    );
    assert_eq!(
        node_neighbour(&node, victim.v6.into()),
        victim_mac,
        "a neighbour advertisement took the victim's IPv6 address"
    );
    // The pod can still announce itself, and reach its neighbour.
    assert!(Node::ping(&attacker.ns, &victim.v4.to_string()));
    assert!(Node::ping(&attacker.ns, &victim.v6.to_string()));

    // Control: without the rules the same announcements take the addresses.
    remove_rules(&node);
    attack();
    assert_eq!(node_neighbour(&node, victim.v4.into()), attacker_mac);
    assert_eq!(node_neighbour(&node, victim.v6.into()), attacker_mac);
}

#[test]
fn del_and_a_failed_add_leave_no_elements_and_gc_removes_stale_ones() {
    let mut node = Node::new("spoof-life");
    let conf = dual_stack(&node);
    let kept = add_pod(&mut node, "kept", &conf);
    let deleted = add_pod(&mut node, "deleted", &conf);
    let vanished = add_pod(&mut node, "vanished", &conf);
    let dropped = add_pod(&mut node, "dropped", &conf);
    for p in [&kept, &deleted, &vanished, &dropped] {
        assert!(guarded(&node, &p.veth), "ADD left {} unguarded", p.veth);
    }

    let r = node.run("DEL", "deleted", Some(&deleted.ns), &conf);
    assert!(r.ok(), "{}", r.stdout);
    // Added again at once (same veth name, elements not yet expired): the
    // new attachment stays guarded after the old elements' expiry.
    let again = node.add("deleted", &deleted.ns, &conf);
    std::thread::sleep(Duration::from_millis(50));
    let mut check = conf.clone();
    check["prevResult"] = again.json.clone();
    let r = node.run("CHECK", "deleted", Some(&deleted.ns), &check);
    assert!(
        r.ok(),
        "a re-ADD right after DEL lost elements: {}",
        r.stdout
    );
    let r = node.run("DEL", "deleted", Some(&deleted.ns), &conf);
    assert!(r.ok(), "{}", r.stdout);
    assert!(unguarded_soon(&node, &deleted.veth), "DEL left elements");

    // An ADD that fails after its elements were added (no nft for the
    // masquerade chain) takes them back with everything else.
    let failing = node.pod("failing");
    let call = node.call("ADD", "failing", Some(&failing));
    let masq = node.conf(json!({"ipMasq": true}));
    let r = common::run_without_nft(call, &masq);
    assert_eq!(r.code(), Some(103), "{}", r.stdout);
    let failed_veth = weft_cni::plan::host_veth_name("failing", "eth0");
    assert!(
        unguarded_soon(&node, &failed_veth),
        "a failed ADD left elements"
    );

    // GC: one attachment's veth vanished without DEL (still listed as
    // valid), one is no longer valid; the kept one keeps its elements.
    Node::ip(&node.name, &["link", "del", &vanished.veth]);
    let mut gc = node.conf(json!({}));
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "kept", "ifname": "eth0"},
        {"containerID": "vanished", "ifname": "eth0"},
    ]);
    let r = node.run("GC", "", None, &gc);
    assert!(r.ok(), "GC: {}", r.stdout);
    assert!(
        unguarded_soon(&node, &vanished.veth),
        "GC kept a vanished veth's elements"
    );
    assert!(
        unguarded_soon(&node, &dropped.veth),
        "GC kept an invalid attachment's elements"
    );
    assert!(
        guarded(&node, &kept.veth),
        "GC removed a valid attachment's elements"
    );
    assert!(
        Node::ping(&kept.ns, "10.88.0.1"),
        "the kept pod lost its network"
    );
}

#[test]
fn check_and_status_report_lost_anti_spoofing() {
    let mut node = Node::new("spoof-check");
    let conf = dual_stack(&node);
    let ns = node.pod("p");
    let r = node.add("p", &ns, &conf);
    let mut check = conf.clone();
    check["prevResult"] = r.json.clone();
    let ok = node.run("CHECK", "p", Some(&ns), &check);
    assert!(ok.ok(), "{}", ok.stdout);
    assert!(node.run("STATUS", "", None, &conf).ok());
    remove_rules(&node);
    let status = node.run("STATUS", "", None, &conf);
    assert_eq!(status.code(), Some(51), "{}", status.stdout);
    assert!(status.json["msg"]
        .as_str()
        .unwrap()
        .contains("anti-spoofing"));
    let broken = node.run("CHECK", "p", Some(&ns), &check);
    assert_eq!(broken.code(), Some(104), "{}", broken.stdout);
    assert!(
        broken.json["msg"]
            .as_str()
            .unwrap()
            .contains("anti-spoofing"),
        "{}",
        broken.stdout
    );
    // The next ADD puts the rules back, and guards its own pod.
    let next = add_pod(&mut node, "q", &conf);
    assert!(guarded(&node, &next.veth));
    assert!(node.run("STATUS", "", None, &conf).ok());
}
