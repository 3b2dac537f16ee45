//! `arp::ArpResponder` against real kernels: namespace A (198.18.251.1/24)
//! and namespace B (198.18.251.2/24) share a veth segment; a responder in B
//! announces 198.18.251.100, which no interface owns, and A's kernel must
//! resolve it to B's MAC. All traffic stays on that veth.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{eventually, ip, Namespaces};
use weft_datapath::arp::ArpResponder;
use weft_datapath::{nft, NetNs};

const VIP: &str = "198.18.251.100";
const A_MAC: &str = "02:00:00:aa:00:01";
const B_MAC: &str = "02:00:00:bb:00:01";

struct Segment {
    a: String,
    b: String,
    a_ns: NetNs,
    b_ns: NetNs,
    _nss: Namespaces,
}

fn segment(tag: &str) -> Segment {
    let mut nss = Namespaces::new(tag);
    let (a, a_ns) = nss.add("a");
    let (b, b_ns) = nss.add("b");
    ip(
        &a,
        &[
            "link", "add", "va", "address", A_MAC, "type", "veth", "peer", "name", "vb", "address",
            B_MAC, "netns", &b,
        ],
    );
    ip(&a, &["addr", "add", "198.18.251.1/24", "dev", "va"]);
    ip(&a, &["link", "set", "va", "up"]);
    ip(&b, &["addr", "add", "198.18.251.2/24", "dev", "vb"]);
    ip(&b, &["link", "set", "vb", "up"]);
    Segment {
        a,
        b,
        a_ns,
        b_ns,
        _nss: nss,
    }
}

impl Segment {
    fn start_responder(&self) -> ArpResponder {
        let r = self
            .b_ns
            .run_in(|| ArpResponder::start("vb"))
            .unwrap()
            .expect("starting the responder");
        assert_eq!(weft_datapath::netlink::format_mac(&r.mac()), B_MAC);
        r
    }

    /// A's neighbour entry for the VIP (`ip neigh` line), if any.
    fn neighbour(&self) -> String {
        ip(&self.a, &["neigh", "show", VIP, "dev", "va"])
            .trim()
            .to_string()
    }

    fn ping_vip(&self) -> bool {
        self.a_ns
            .command("ping")
            .args(["-c1", "-W1", VIP])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

fn vip_set() -> BTreeSet<Ipv4Addr> {
    BTreeSet::from([VIP.parse().unwrap()])
}

#[test]
fn answers_for_announced_addresses_and_only_those() {
    let seg = segment("arp");
    let responder = seg.start_responder();
    // Something in B must accept the VIP's traffic to prove delivery: DNAT
    // it to B's own address.
    nft::apply(
        &format!(
            "table ip wdt {{
               chain pre {{
                 type nat hook prerouting priority -100;
                 ip daddr {VIP} dnat to 198.18.251.2;
               }}
             }}"
        ),
        Some(&seg.b_ns),
    )
    .unwrap();

    // Not announced yet: nobody answers.
    assert!(!seg.ping_vip(), "the VIP answered before it was announced");
    assert!(!seg.neighbour().contains(B_MAC), "{}", seg.neighbour());

    responder.announce(&vip_set());
    assert_eq!(responder.announced(), vip_set());
    ip(&seg.a, &["neigh", "flush", "dev", "va"]);
    assert!(seg.ping_vip(), "ping to the announced VIP failed");
    let entry = seg.neighbour();
    assert!(entry.contains(&format!("lladdr {B_MAC}")), "{entry}");

    // The interface bouncing does not end the responder: the kernel
    // re-attaches its socket when the link comes back.
    ip(&seg.b, &["link", "set", "vb", "down"]);
    ip(&seg.b, &["link", "set", "vb", "up"]);
    ip(&seg.a, &["neigh", "flush", "dev", "va"]);
    assert!(
        eventually(Duration::from_secs(3), || seg.ping_vip()),
        "ping to the VIP failed after vb went down and up"
    );

    // Withdrawn: answered no more.
    responder.announce(&BTreeSet::new());
    assert!(responder.announced().is_empty());
    ip(&seg.a, &["neigh", "flush", "dev", "va"]);
    assert!(!seg.ping_vip(), "the VIP answered after it was withdrawn");
    let entry = seg.neighbour();
    assert!(!entry.contains(B_MAC), "{entry}");

    // Addresses no host can own are never announced.
    responder.announce(&BTreeSet::from([
        Ipv4Addr::BROADCAST,
        Ipv4Addr::UNSPECIFIED,
    ]));
    assert!(responder.announced().is_empty());

    // Stopping does not wait for a timeout.
    let started = Instant::now();
    drop(responder);
    assert!(started.elapsed() < Duration::from_millis(200));
}

#[test]
fn gratuitous_replies_update_a_stale_neighbour_at_once() {
    let seg = segment("garp");
    // A believes the VIP is still at the old owner's MAC. An existing entry
    // is all Linux needs to take a gratuitous reply (arp_accept stays 0; it
    // only governs creating new entries from unsolicited ARP).
    ip(
        &seg.a,
        &[
            "neigh",
            "replace",
            VIP,
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "va",
            "nud",
            "stale",
        ],
    );
    assert!(seg.neighbour().contains("02:00:00:00:00:01"));
    let responder = seg.start_responder();
    responder.announce(&vip_set());
    // No traffic from A: only the gratuitous replies can change the entry.
    assert!(
        eventually(Duration::from_secs(1), || seg
            .neighbour()
            .contains(&format!("lladdr {B_MAC}"))),
        "A still has {}",
        seg.neighbour()
    );
}

#[test]
fn unknown_or_unfit_interfaces_are_refused() {
    let mut nss = Namespaces::new("arpx");
    let (_, ns) = nss.add("x");
    let missing = ns.run_in(|| ArpResponder::start("nosuch0")).unwrap();
    assert!(matches!(
        missing,
        Err(weft_datapath::arp::ArpError::NoSuchInterface(_))
    ));
    // Loopback has no Ethernet address.
    let lo = ns.run_in(|| ArpResponder::start("lo")).unwrap();
    assert!(
        matches!(lo, Err(weft_datapath::arp::ArpError::NotEthernet { .. })),
        "{:?}",
        lo.err()
    );
}
