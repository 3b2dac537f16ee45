//! `nft_sets` against a real kernel, in a namespace the test creates:
//! elements written over netlink read back identically through `nft` (so the
//! key layout is nft's), several sets change in one all-or-nothing
//! transaction, elements are removed by expiring them (also one that is not
//! there, or was just removed and is added again) or deleting them (the
//! way for kernels before 6.12), and large batches and dumps work.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::Namespaces;
use weft_datapath::nft::{self, Family};
use weft_datapath::nft_sets::{key, KeyPart, SetElements, Sets};
use weft_datapath::NetNs;

const SCRIPT: &str = "table bridge wdt {
  set macs { type ifname . ether_addr ; flags timeout ; }
  set v4 { type ifname . ipv4_addr ; flags timeout ; }
  set v6 { type ifname . ipv6_addr ; flags timeout ; }
}
";

const KEEP: Duration = Duration::from_secs(3600);
const EXPIRE: Duration = Duration::from_millis(1);

/// Lets elements put with [`EXPIRE`] run out.
fn let_expire() {
    std::thread::sleep(Duration::from_millis(20));
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn list(ns: &NetNs, set: &str) -> String {
    nft::run(&["list", "set", "bridge", "wdt", set], Some(ns)).unwrap()
}

/// The test table's sets, through a socket in `ns`.
fn sets_in(ns: &NetNs, table: &str) -> Sets {
    ns.run_in(|| Sets::open(Family::Bridge, table))
        .unwrap()
        .unwrap()
}

fn elements(set: &str, keys: Vec<Vec<u8>>) -> SetElements {
    SetElements {
        set: set.into(),
        keys,
    }
}

#[test]
fn elements_added_over_netlink_are_what_nft_shows() {
    let mut nss = Namespaces::new("sets");
    let (_, ns) = nss.add("x");
    nft::apply(SCRIPT, Some(&ns)).unwrap();
    let mac = key(&[
        KeyPart::Ifname("wv0a"),
        KeyPart::Mac([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]),
    ])
    .unwrap();
    let v4 = key(&[KeyPart::Ifname("wv0a"), KeyPart::Ip(ip("10.1.2.3"))]).unwrap();
    let v6 = key(&[KeyPart::Ifname("wv0a"), KeyPart::Ip(ip("fd00::7"))]).unwrap();
    let changes = [
        elements("macs", vec![mac.clone()]),
        elements("v4", vec![v4.clone()]),
        elements("v6", vec![v6.clone()]),
    ];
    sets_in(&ns, "wdt").put(&changes, KEEP).unwrap();
    assert!(
        list(&ns, "macs").contains(r#""wv0a" . 02:11:22:33:44:55"#),
        "{}",
        list(&ns, "macs")
    );
    assert!(list(&ns, "v4").contains(r#""wv0a" . 10.1.2.3"#));
    assert!(list(&ns, "v6").contains(r#""wv0a" . fd00::7"#));
    // Adding again is no error; reading back gives the same bytes.
    sets_in(&ns, "wdt").put(&changes, KEEP).unwrap();
    let read = sets_in(&ns, "wdt").keys("v4").unwrap();
    assert_eq!(read, vec![v4.clone()]);

    sets_in(&ns, "wdt").put(&changes, EXPIRE).unwrap();
    let_expire();
    for set in ["macs", "v4", "v6"] {
        assert!(!list(&ns, set).contains("wv0a"), "{}", list(&ns, set));
    }
    assert!(sets_in(&ns, "wdt").keys("v4").unwrap().is_empty());
    // Put back right after expiring (before the kernel freed it): there.
    sets_in(&ns, "wdt").put(&changes, KEEP).unwrap();
    assert_eq!(sets_in(&ns, "wdt").keys("v4").unwrap(), vec![v4]);
    std::thread::sleep(Duration::from_millis(50));
    assert!(list(&ns, "v6").contains(r#""wv0a" . fd00::7"#));
}

#[test]
fn a_failing_transaction_changes_nothing() {
    let mut nss = Namespaces::new("sets-atomic");
    let (_, ns) = nss.add("x");
    nft::apply(SCRIPT, Some(&ns)).unwrap();
    let v4 = key(&[KeyPart::Ifname("wv0b"), KeyPart::Ip(ip("10.1.2.4"))]).unwrap();
    let changes = [
        elements("v4", vec![v4]),
        elements("no-such-set", vec![vec![0; 20]]),
    ];
    let err = sets_in(&ns, "wdt").put(&changes, KEEP).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(!list(&ns, "v4").contains("wv0b"), "{}", list(&ns, "v4"));
    // The failing message first: the rest is still answered, and undone.
    let reversed = [changes[1].clone(), changes[0].clone()];
    let err = sets_in(&ns, "wdt").put(&reversed, KEEP).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(!list(&ns, "v4").contains("wv0b"), "{}", list(&ns, "v4"));
    // Expiring an element that is not there is no error, and leaves none.
    let missing = [elements(
        "v4",
        vec![key(&[KeyPart::Ifname("wv0c"), KeyPart::Ip(ip("10.9.9.9"))]).unwrap()],
    )];
    sets_in(&ns, "wdt").put(&missing, EXPIRE).unwrap();
    let_expire();
    assert!(sets_in(&ns, "wdt").keys("v4").unwrap().is_empty());
}

#[test]
fn thousands_of_elements_in_one_batch_and_one_dump() {
    let mut nss = Namespaces::new("sets-many");
    let (_, ns) = nss.add("x");
    nft::apply(SCRIPT, Some(&ns)).unwrap();
    let mut want: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| {
            let addr = IpAddr::V4((0x0a00_0000u32 + i).into());
            key(&[KeyPart::Ifname("wvmany"), KeyPart::Ip(addr)]).unwrap()
        })
        .collect();
    let changes = [elements("v4", want.clone())];
    sets_in(&ns, "wdt").put(&changes, KEEP).unwrap();
    let mut read = sets_in(&ns, "wdt").keys("v4").unwrap();
    read.sort();
    want.sort();
    assert_eq!(read.len(), 3000);
    assert_eq!(read, want);
    sets_in(&ns, "wdt").put(&changes, EXPIRE).unwrap();
    let_expire();
    let left = sets_in(&ns, "wdt").keys("v4").unwrap();
    assert!(left.is_empty());
    // An absent set or table has no elements.
    let none = sets_in(&ns, "absent").keys("v4").unwrap();
    assert!(none.is_empty());
}

#[test]
fn deleting_removes_at_once_and_a_missing_element_fails_the_transaction() {
    let mut nss = Namespaces::new("sets-delete");
    let (_, ns) = nss.add("x");
    nft::apply(SCRIPT, Some(&ns)).unwrap();
    let here = key(&[KeyPart::Ifname("wv0d"), KeyPart::Ip(ip("10.1.2.5"))]).unwrap();
    let absent = key(&[KeyPart::Ifname("wv0e"), KeyPart::Ip(ip("10.1.2.6"))]).unwrap();
    sets_in(&ns, "wdt")
        .put(&[elements("v4", vec![here.clone()])], KEEP)
        .unwrap();
    let both = [elements("v4", vec![here.clone(), absent])];
    let err = sets_in(&ns, "wdt").delete(&both).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert_eq!(sets_in(&ns, "wdt").keys("v4").unwrap(), vec![here.clone()]);
    sets_in(&ns, "wdt")
        .delete(&[elements("v4", vec![here])])
        .unwrap();
    assert!(sets_in(&ns, "wdt").keys("v4").unwrap().is_empty());
}
