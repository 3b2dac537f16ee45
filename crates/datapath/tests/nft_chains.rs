//! `nft::chain_names` against a real kernel, in a namespace the test
//! creates: a table with thousands of chains (a multi-part dump), next to
//! other tables of the same and of another family that must not leak in.

mod common;

use std::fmt::Write;
use std::time::Instant;

use common::Namespaces;
use weft_datapath::nft::{self, Family};

#[test]
fn lists_exactly_the_chains_of_one_table() {
    let mut nss = Namespaces::new("nft");
    let (_, ns) = nss.add("x");
    let mut want: Vec<String> = (0..3000).map(|i| format!("svc-{i:05}-udp")).collect();
    let mut script = String::from("table inet wdt {\n");
    for name in &want {
        writeln!(script, "  chain {name} {{}}").unwrap();
    }
    script.push_str("  chain input { type filter hook input priority 0; }\n}\n");
    // Same family, other table; same table name, other family.
    script.push_str("table inet wdtother { chain not-me { }; }\n");
    script.push_str("table ip wdt { chain ip-only { }; }\n");
    nft::apply(&script, Some(&ns)).unwrap();
    want.push("input".into());
    want.sort();

    let started = Instant::now();
    let mut got = ns
        .run_in(|| nft::chain_names(Family::Inet, "wdt"))
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    got.sort();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    eprintln!("chain_names: {} chains in {took:?}", got.len());

    let ip_only = ns.run_in(|| nft::chain_names(Family::Ip, "wdt")).unwrap();
    assert_eq!(ip_only.unwrap(), vec!["ip-only".to_string()]);
    let other = ns.run_in(|| nft::chain_names(Family::Inet, "wdtother"));
    assert_eq!(other.unwrap().unwrap(), vec!["not-me".to_string()]);
    // The existing single-chain query still works on the shared socket code.
    assert!(ns
        .run_in(|| nft::chain_exists(Family::Inet, "wdt", "svc-02999-udp"))
        .unwrap()
        .unwrap());
    assert!(!ns
        .run_in(|| nft::chain_exists(Family::Inet, "wdt", "svc-03000-udp"))
        .unwrap()
        .unwrap());
}

#[test]
fn an_absent_table_has_no_chains() {
    let mut nss = Namespaces::new("nft0");
    let (_, ns) = nss.add("x");
    let none = ns.run_in(|| nft::chain_names(Family::Inet, "wdt")).unwrap();
    assert_eq!(none.unwrap(), Vec::<String>::new());
    nft::apply("table ip6 other { chain c { }; }", Some(&ns)).unwrap();
    let none = ns.run_in(|| nft::chain_names(Family::Ip6, "wdt")).unwrap();
    assert_eq!(none.unwrap(), Vec::<String>::new());
    assert!(!ns
        .run_in(|| nft::chain_exists(Family::Inet, "wdt", "c"))
        .unwrap()
        .unwrap());
}

#[test]
fn a_table_exists_even_without_chains() {
    let mut nss = Namespaces::new("nftt");
    let (_, ns) = nss.add("x");
    let exists = |family, table| {
        ns.run_in(|| nft::table_exists(family, table))
            .unwrap()
            .unwrap()
    };
    assert!(!exists(Family::Ip6, "empty"));
    nft::apply("table ip6 empty { }", Some(&ns)).unwrap();
    assert!(exists(Family::Ip6, "empty"));
    assert!(!exists(Family::Ip, "empty"), "another family's table");
}

#[test]
fn lists_the_named_sets_and_maps_of_one_table() {
    let mut nss = Namespaces::new("nfts");
    let (_, ns) = nss.add("x");
    let none = ns.run_in(|| nft::set_names(Family::Ip, "wdt")).unwrap();
    assert_eq!(none.unwrap(), Vec::<String>::new());
    let mut want: Vec<String> = (0..500).map(|i| format!("aff-{i:04}")).collect();
    let mut script = String::from("table ip wdt {\n  map m { type ipv4_addr : verdict; }\n");
    for name in &want {
        writeln!(script, "  set {name} {{ type ipv4_addr; }}").unwrap();
    }
    // A rule with an anonymous set: not a named set, not listed.
    script.push_str("  chain c { ip daddr { 10.0.0.1, 10.0.0.2 } accept; }\n}\n");
    script.push_str("table ip wdtother { set not-me { type ipv4_addr; }; }\n");
    script.push_str("table inet wdt { set other-family { type ipv4_addr; }; }\n");
    nft::apply(&script, Some(&ns)).unwrap();
    want.push("m".into());
    want.sort();
    let mut got = ns
        .run_in(|| nft::set_names(Family::Ip, "wdt"))
        .unwrap()
        .unwrap();
    got.sort();
    assert_eq!(got, want);
}
