//! Subnet leases: renewal, reuse after a restart, takeover after expiry,
//! release, expiry, exhaustion and a misbehaving chooser.

mod common;

use std::cell::Cell;
use std::net::IpAddr;
use std::thread::sleep;
use std::time::{Duration, SystemTime};

use common::{first_free_24, net, pod_network, temp_store};
use ipnet::IpNet;
use serde_json::{json, Value};
use weft_store::{EventKind, Lease, Store, StoreError, LEASE_KIND};

const NETWORK: &str = "weft";
const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(100);
/// Sleeping this long lets a SHORT lease expire.
const PAST_SHORT: Duration = Duration::from_millis(150);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("valid address")
}

fn vtep(mac: &str) -> Value {
    json!({"vtepMAC": mac})
}

fn acquire(store: &Store, node: &str, ttl: Duration) -> Lease {
    store
        .acquire_lease(
            NETWORK,
            node,
            ip("192.168.1.10"),
            &vtep("02:00:00:00:00:01"),
            ttl,
            pod_network,
        )
        .expect("acquire")
}

fn live_subnets(store: &Store) -> Vec<(IpNet, String)> {
    let (leases, _) = store.leases(NETWORK).expect("leases");
    leases
        .into_iter()
        .map(|lease| (lease.subnet, lease.node))
        .collect()
}

#[test]
fn a_node_acquiring_again_keeps_its_subnet_with_a_later_expiry() {
    let (_dir, store) = temp_store();
    let first = acquire(&store, "node-a", LONG);
    assert_eq!(first.subnet, net("10.244.0.0/24"));
    assert_eq!(first.network, NETWORK);
    assert_eq!(first.node, "node-a");
    assert!(first.expires_at > SystemTime::now() + LONG - Duration::from_secs(5));

    sleep(Duration::from_millis(5));
    let chooser_calls = Cell::new(0);
    let second = store
        .acquire_lease(
            NETWORK,
            "node-a",
            ip("192.168.1.99"),
            &vtep("02:00:00:00:00:99"),
            LONG,
            |taken| {
                chooser_calls.set(chooser_calls.get() + 1);
                pod_network(taken)
            },
        )
        .expect("re-acquire");
    assert_eq!(chooser_calls.get(), 0, "a held lease needs no new subnet");
    assert_eq!(second.subnet, first.subnet);
    assert!(second.expires_at > first.expires_at);
    assert!(second.revision > first.revision);
    assert_eq!(second.public_ip, ip("192.168.1.99"), "address is updated");
    assert_eq!(
        second.backend,
        vtep("02:00:00:00:00:99"),
        "backend is updated"
    );

    let (leases, at) = store.leases(NETWORK).expect("leases");
    assert_eq!(leases, vec![second.clone()]);
    assert_eq!(at, second.revision);
}

#[test]
fn other_nodes_get_other_subnets_and_see_them_taken() {
    let (_dir, store) = temp_store();
    acquire(&store, "node-a", LONG);
    acquire(&store, "node-b", LONG);
    let seen = std::cell::RefCell::new(Vec::new());
    let lease = store
        .acquire_lease(
            NETWORK,
            "node-c",
            ip("192.168.1.12"),
            &json!({}),
            LONG,
            |taken| {
                seen.borrow_mut().extend_from_slice(taken);
                pod_network(taken)
            },
        )
        .expect("acquire");
    let mut seen = seen.into_inner();
    seen.sort();
    assert_eq!(seen, [net("10.244.0.0/24"), net("10.244.1.0/24")]);
    assert_eq!(lease.subnet, net("10.244.2.0/24"));

    // Other networks are separate pools.
    let other = store
        .acquire_lease(
            "storage",
            "node-a",
            ip("192.168.1.10"),
            &json!({}),
            LONG,
            |taken| {
                assert!(taken.is_empty());
                first_free_24("10.250.0.0/16", taken)
            },
        )
        .expect("acquire in another network");
    assert_eq!(other.subnet, net("10.250.0.0/24"));
    assert_eq!(live_subnets(&store).len(), 3);
}

#[test]
fn a_restarted_node_gets_its_expired_subnet_back_if_free() {
    let (_dir, store) = temp_store();
    acquire(&store, "node-a", LONG);
    let before = acquire(&store, "node-b", SHORT);
    sleep(PAST_SHORT);
    assert_eq!(
        live_subnets(&store),
        [(net("10.244.0.0/24"), "node-a".to_owned())]
    );

    // node-b's chooser would pick 10.244.1.0/24 anyway; prove it is not asked.
    let again = store
        .acquire_lease(
            NETWORK,
            "node-b",
            ip("192.168.1.11"),
            &json!({}),
            LONG,
            |_| None,
        )
        .expect("re-acquire after a restart");
    assert_eq!(again.subnet, before.subnet);
    assert!(again.expires_at > SystemTime::now());
    let last = store
        .events_since(LEASE_KIND, before.revision)
        .expect("events");
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].kind, EventKind::Modified);
}

#[test]
fn an_expired_subnet_can_go_to_another_node_and_the_first_loses_it() {
    let (_dir, store) = temp_store();
    let lost = acquire(&store, "node-a", SHORT);
    sleep(PAST_SHORT);

    let taker = acquire(&store, "node-b", LONG);
    assert_eq!(
        taker.subnet, lost.subnet,
        "the first free /24 is the expired one"
    );
    assert_eq!(live_subnets(&store), [(lost.subnet, "node-b".to_owned())]);

    let error = store
        .renew_lease(NETWORK, "node-a", LONG)
        .expect_err("lost");
    assert!(
        matches!(&error, StoreError::LeaseLost { node } if node == "node-a"),
        "{error}"
    );
    assert!(error.to_string().contains("acquire a new lease"), "{error}");

    // The takeover logged node-a's lease as deleted before node-b's as added.
    let events = store
        .events_since(LEASE_KIND, lost.revision)
        .expect("events");
    let changes: Vec<(EventKind, &str)> = events
        .iter()
        .map(|event| (event.kind, event.object.name.as_str()))
        .collect();
    assert_eq!(
        changes,
        [(EventKind::Deleted, "node-a"), (EventKind::Added, "node-b")]
    );

    let moved = acquire(&store, "node-a", LONG);
    assert_eq!(moved.subnet, net("10.244.1.0/24"));
}

#[test]
fn renewing_extends_even_a_just_expired_lease_nobody_took() {
    let (_dir, store) = temp_store();
    let lease = acquire(&store, "node-a", SHORT);
    sleep(PAST_SHORT);
    let renewed = store.renew_lease(NETWORK, "node-a", LONG).expect("renew");
    assert_eq!(renewed.subnet, lease.subnet);
    assert_eq!(renewed.public_ip, lease.public_ip);
    assert_eq!(renewed.backend, lease.backend);
    assert!(renewed.expires_at > SystemTime::now() + LONG - Duration::from_secs(5));

    let error = store
        .renew_lease(NETWORK, "node-z", LONG)
        .expect_err("never held");
    assert!(matches!(error, StoreError::LeaseLost { .. }), "{error}");
}

#[test]
fn releasing_frees_the_subnet() {
    let (_dir, store) = temp_store();
    let released = acquire(&store, "node-a", LONG);
    assert!(store.release_lease(NETWORK, "node-a").expect("release"));
    assert!(!store
        .release_lease(NETWORK, "node-a")
        .expect("release again"));
    assert!(live_subnets(&store).is_empty());
    assert!(matches!(
        store.renew_lease(NETWORK, "node-a", LONG),
        Err(StoreError::LeaseLost { .. })
    ));

    let next = acquire(&store, "node-b", LONG);
    assert_eq!(next.subnet, released.subnet);
}

#[test]
fn expire_leases_removes_only_expired_ones() {
    let (_dir, store) = temp_store();
    acquire(&store, "node-a", SHORT);
    acquire(&store, "node-b", SHORT);
    acquire(&store, "node-c", LONG);
    assert_eq!(
        store.expire_leases(NETWORK).expect("nothing expired yet"),
        0
    );
    sleep(PAST_SHORT);

    let before = store.revision().expect("revision");
    assert_eq!(store.expire_leases(NETWORK).expect("expire"), 2);
    assert_eq!(store.expire_leases(NETWORK).expect("again"), 0);
    let events = store.events_since(LEASE_KIND, before).expect("events");
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|event| event.kind == EventKind::Deleted));
    assert_eq!(
        live_subnets(&store),
        [(net("10.244.2.0/24"), "node-c".to_owned())]
    );
    assert!(matches!(
        store.renew_lease(NETWORK, "node-a", LONG),
        Err(StoreError::LeaseLost { .. })
    ));
}

#[test]
fn leases_are_sorted_by_subnet_not_text() {
    let (_dir, store) = temp_store();
    for (node, subnet) in [
        ("n10", "10.244.10.0/24"),
        ("n2", "10.244.2.0/24"),
        ("n1", "10.244.1.0/24"),
    ] {
        store
            .acquire_lease(NETWORK, node, ip("192.168.1.1"), &json!({}), LONG, |_| {
                Some(net(subnet))
            })
            .expect("acquire");
    }
    let order: Vec<String> = live_subnets(&store)
        .into_iter()
        .map(|(_, node)| node)
        .collect();
    assert_eq!(order, ["n1", "n2", "n10"]);
}

#[test]
fn a_full_network_is_exhausted() {
    let (_dir, store) = temp_store();
    let two_subnets = |taken: &[IpNet]| first_free_24("10.244.0.0/23", taken);
    for node in ["node-a", "node-b"] {
        store
            .acquire_lease(
                NETWORK,
                node,
                ip("192.168.1.1"),
                &json!({}),
                LONG,
                two_subnets,
            )
            .expect("room left");
    }
    let before = store.revision().expect("revision");
    let error = store
        .acquire_lease(
            NETWORK,
            "node-c",
            ip("192.168.1.3"),
            &json!({}),
            LONG,
            two_subnets,
        )
        .expect_err("full");
    assert!(
        matches!(&error, StoreError::Exhausted { network } if network == NETWORK),
        "{error}"
    );
    assert!(error.to_string().contains("weft"), "{error}");
    assert_eq!(
        store.revision().expect("revision"),
        before,
        "a failed acquire changes nothing"
    );
}

#[test]
fn a_chooser_picking_a_taken_or_overlapping_subnet_is_refused() {
    let (_dir, store) = temp_store();
    acquire(&store, "node-a", LONG);
    for greedy in ["10.244.0.0/24", "10.244.0.128/25", "10.244.0.0/16"] {
        let error = store
            .acquire_lease(
                NETWORK,
                "node-b",
                ip("192.168.1.2"),
                &json!({}),
                LONG,
                |_| Some(net(greedy)),
            )
            .expect_err("overlaps node-a");
        assert!(
            matches!(&error, StoreError::SubnetTaken { holder, .. } if holder == "node-a"),
            "{greedy}: {error}"
        );
    }
    assert_eq!(
        live_subnets(&store),
        [(net("10.244.0.0/24"), "node-a".to_owned())]
    );
}

#[test]
fn a_host_bits_subnet_is_stored_as_its_network() {
    let (_dir, store) = temp_store();
    let lease = store
        .acquire_lease(
            NETWORK,
            "node-a",
            ip("192.168.1.1"),
            &json!({}),
            LONG,
            |_| Some(net("10.244.7.9/24")),
        )
        .expect("acquire");
    assert_eq!(lease.subnet, net("10.244.7.0/24"));
}

#[test]
fn ipv6_subnets_work_too() {
    let (_dir, store) = temp_store();
    let lease = store
        .acquire_lease(NETWORK, "node-a", ip("fd00::10"), &json!({}), LONG, |_| {
            Some(net("fd00:10:244:1::/64"))
        })
        .expect("acquire");
    assert_eq!(lease.subnet, net("fd00:10:244:1::/64"));
    assert_eq!(store.leases(NETWORK).expect("leases").0, vec![lease]);
}

#[test]
fn empty_names_are_refused() {
    let (_dir, store) = temp_store();
    for (network, node) in [("", "node-a"), (NETWORK, "")] {
        let error = store
            .acquire_lease(
                network,
                node,
                ip("192.168.1.1"),
                &json!({}),
                LONG,
                pod_network,
            )
            .expect_err("empty name");
        assert!(matches!(error, StoreError::InvalidKey { .. }), "{error}");
    }
}

#[test]
fn a_huge_ttl_does_not_overflow() {
    let (_dir, store) = temp_store();
    let lease = acquire(&store, "node-a", Duration::MAX);
    assert!(lease.expires_at > SystemTime::now() + Duration::from_secs(1_000 * 365 * 86_400));
    let events = store.events_since(LEASE_KIND, 0).expect("events");
    assert_eq!(events[0].object.value["expiresAt"], "9999-12-30T22:00:00Z");
}

#[test]
fn a_lease_of_no_time_is_refused_and_changes_nothing() {
    let (_dir, store) = temp_store();
    acquire(&store, "node-a", LONG);
    let before = store.revision().expect("revision");
    let error = store
        .acquire_lease(
            NETWORK,
            "node-b",
            ip("192.168.1.3"),
            &json!({}),
            Duration::ZERO,
            pod_network,
        )
        .expect_err("zero TTL");
    assert!(
        matches!(&error, StoreError::ZeroTtl { node } if node == "node-b"),
        "{error}"
    );
    assert!(error.to_string().contains("positive"), "{error}");
    let error = store
        .renew_lease(NETWORK, "node-a", Duration::ZERO)
        .expect_err("zero TTL");
    assert!(matches!(error, StoreError::ZeroTtl { .. }), "{error}");
    assert_eq!(store.revision().expect("revision"), before);
    assert_eq!(live_subnets(&store).len(), 1);
}
