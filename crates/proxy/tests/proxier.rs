//! The proxier's sync logic against an in-memory kernel
//! ([`weft_proxy::kernel::Fake`]): full and incremental syncs, deletions,
//! failures, drift, conntrack cleanup and rejected Services — no root, no
//! nft.

mod common;

use std::sync::atomic::Ordering;

use common::ctx;
use serde_json::json;
use weft_datapath::nft::Family;
use weft_proxy::kernel::{Fake, Kernel};
use weft_proxy::proxier::Change;
use weft_proxy::table::TABLE;
use weft_proxy::{Proxier, ServiceKey, ServiceRules};

/// Service `name` at `ip` port 80 of `protocol`, with `endpoints` on
/// node-1.
fn planned(name: &str, ip: &str, protocol: &str, endpoints: &[&str]) -> Change {
    planned_with(name, ip, protocol, endpoints, json!({}))
}

/// [`planned`] with more fields in the Service's spec.
fn planned_with(
    name: &str,
    ip: &str,
    protocol: &str,
    endpoints: &[&str],
    extra: serde_json::Value,
) -> Change {
    let mut spec =
        json!({"clusterIP": ip, "ports": [{"name": "p", "port": 80, "protocol": protocol}]});
    for (field, value) in extra.as_object().cloned().unwrap_or_default() {
        spec[field] = value;
    }
    let on_node: Vec<(&str, &str)> = endpoints.iter().map(|ip| (*ip, "node-1")).collect();
    let (key, rules) = common::planned(name, spec, &on_node);
    (key, Some(rules))
}

fn full(changes: &[Change]) -> Vec<(ServiceKey, ServiceRules)> {
    changes
        .iter()
        .filter_map(|(k, r)| Some((k.clone(), r.clone()?)))
        .collect()
}

fn proxier() -> Proxier<Fake> {
    Proxier::with_kernel(ctx(), Fake::default())
}

/// The ClusterIP frontends in the table: `ip . proto . port` keys.
fn frontends(p: &Proxier<Fake>) -> Vec<String> {
    p.kernel().ruleset(|m| {
        let map = m.elements(Family::Ip, TABLE, "service-ips").unwrap();
        map.keys().cloned().collect()
    })
}

/// Every rule and every element of the table, one per line: where
/// endpoint addresses show.
fn all_rules(p: &Proxier<Fake>) -> String {
    p.kernel().ruleset(|m| {
        let t = TABLE;
        let rules = m
            .chain_names(Family::Ip, t)
            .into_iter()
            .flat_map(|c| m.rules(Family::Ip, t, &c).unwrap().to_vec());
        let elements = m.set_names(Family::Ip, t).into_iter().flat_map(|set| {
            let elements = m.elements(Family::Ip, t, &set).unwrap();
            elements
                .iter()
                .map(|(k, v)| format!("{set}: {k} : {v:?}"))
                .collect::<Vec<_>>()
        });
        rules.chain(elements).collect::<Vec<_>>().join("\n")
    })
}

#[test]
fn a_full_sync_writes_every_service_and_matches_what_it_wanted() {
    let mut p = proxier();
    let services = [
        planned("web", "10.96.0.10", "TCP", &["10.244.1.2", "10.244.1.3"]),
        planned("dns", "10.96.0.53", "UDP", &["10.244.1.4"]),
    ];
    let report = p.sync_all(|| full(&services)).unwrap();
    assert_eq!(report.services, 2);
    assert!(p.is_synced());
    assert_eq!(
        frontends(&p),
        ["10.96.0.10 . tcp . 80", "10.96.0.53 . udp . 80"]
    );
    let rules = all_rules(&p);
    for endpoint in ["10.244.1.2", "10.244.1.3", "10.244.1.4"] {
        assert!(rules.contains(endpoint), "{endpoint} missing:\n{rules}");
    }
    assert!(!p.drifted().unwrap());
    // A second full sync over the table converges to the same.
    p.sync_all(|| full(&services)).unwrap();
    assert_eq!(frontends(&p).len(), 2);
    assert!(!p.drifted().unwrap());
}

#[test]
fn changes_rewrite_only_their_service_and_deletions_leave_nothing() {
    let mut p = proxier();
    let services = [
        planned("web", "10.96.0.10", "TCP", &["10.244.1.2"]),
        planned("api", "10.96.0.11", "TCP", &["10.244.1.5"]),
    ];
    p.sync_all(|| full(&services)).unwrap();
    let chains_before = p.kernel().chain_names().unwrap();
    let written = p.kernel().transactions.lock().unwrap().len();
    let report = p
        .apply(vec![planned("web", "10.96.0.10", "TCP", &["10.244.1.9"])])
        .unwrap();
    assert_eq!(p.kernel().transactions.lock().unwrap().len(), written + 1);
    let change = p
        .kernel()
        .transactions
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(change.contains("10.244.1.9"), "{change}");
    assert!(
        !change.contains("10.244.1.5"),
        "api was rewritten:\n{change}"
    );
    assert!(report.elements_changed >= 2, "{report:?}");
    let rules = all_rules(&p);
    assert!(
        rules.contains("10.244.1.9") && !rules.contains("10.244.1.2"),
        "{rules}"
    );
    assert!(!p.drifted().unwrap());
    // Deleting both leaves only the base table.
    let web = planned("web", "10.96.0.10", "TCP", &[]).0;
    let api = planned("api", "10.96.0.11", "TCP", &[]).0;
    p.apply(vec![(web, None), (api, None)]).unwrap();
    assert!(frontends(&p).is_empty());
    let chains_after = p.kernel().chain_names().unwrap();
    assert!(chains_after.len() < chains_before.len(), "{chains_after:?}");
    assert!(!all_rules(&p).contains("10.244.1."), "{}", all_rules(&p));
    assert!(!p.drifted().unwrap());
}

#[test]
fn a_failed_apply_unsyncs_and_the_next_full_sync_converges() {
    let mut p = proxier();
    let web = [planned("web", "10.96.0.10", "TCP", &["10.244.1.2"])];
    p.sync_all(|| full(&web)).unwrap();
    p.kernel().failing.store(true, Ordering::SeqCst);
    let changed = [planned("web", "10.96.0.10", "TCP", &["10.244.1.3"])];
    assert!(p.apply(changed.to_vec()).is_err());
    assert!(!p.is_synced(), "the caller must learn to sync in full");
    p.kernel().failing.store(false, Ordering::SeqCst);
    p.sync_all(|| full(&changed)).unwrap();
    let rules = all_rules(&p);
    assert!(
        rules.contains("10.244.1.3") && !rules.contains("10.244.1.2"),
        "{rules}"
    );
}

#[test]
fn a_removed_udp_endpoint_has_its_flows_deleted() {
    let mut p = proxier();
    let dns = [planned(
        "dns",
        "10.96.0.53",
        "UDP",
        &["10.244.1.4", "10.244.1.5"],
    )];
    p.sync_all(|| full(&dns)).unwrap();
    // The full sync (an agent that starts, or one that must resync) clears
    // the flows none of the Service's endpoints answers: it cannot know
    // which endpoints went away meanwhile.
    let endpoints: Vec<std::net::IpAddr> = ["10.244.1.4", "10.244.1.5"]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    let deleted = p.kernel().flows_deleted.lock().unwrap().clone();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0].reply_src_not_in, endpoints);
    assert_eq!(deleted[0].original_dst, Some("10.96.0.53".parse().unwrap()));
    p.apply(vec![planned("dns", "10.96.0.53", "UDP", &["10.244.1.5"])])
        .unwrap();
    let deleted = p.kernel().flows_deleted.lock().unwrap().clone();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    assert_eq!(deleted[1].reply_src, Some("10.244.1.4".parse().unwrap()));
    assert_eq!(deleted[1].original_dst, Some("10.96.0.53".parse().unwrap()));
    assert_eq!(deleted[1].original_dst_port, Some(80));
    // TCP endpoints going away delete no flows (TCP ends by itself).
    let web = [planned("web", "10.96.0.10", "TCP", &["10.244.1.2"])];
    p.apply(web.to_vec()).unwrap();
    p.apply(vec![planned("web", "10.96.0.10", "TCP", &[])])
        .unwrap();
    assert_eq!(p.kernel().flows_deleted.lock().unwrap().len(), 2);
}

#[test]
fn chains_and_sets_added_by_hand_are_drift_and_a_full_sync_removes_them() {
    let mut p = proxier();
    let web = [planned("web", "10.96.0.10", "TCP", &["10.244.1.2"])];
    p.sync_all(|| full(&web)).unwrap();
    p.kernel()
        .tamper(
            "add chain ip weft-proxy stray\nadd set ip weft-proxy stray-set { type ipv4_addr; }",
        )
        .unwrap();
    assert!(p.drifted().unwrap());
    let report = p.sync_all(|| full(&web)).unwrap();
    assert_eq!((report.stale_chains, report.stale_sets), (1, 1));
    assert!(!p.drifted().unwrap());
    assert!(!p
        .kernel()
        .chain_names()
        .unwrap()
        .contains(&"stray".to_string()));
    assert!(all_rules(&p).contains("10.244.1.2"));
}

#[test]
fn a_service_nft_rejects_is_left_out_and_the_others_are_programmed() {
    let mut p = proxier();
    let good = planned("web", "10.96.0.10", "TCP", &["10.244.1.2"]);
    // Affinity gives the Service chains of its own.
    let affinity = json!({"sessionAffinity": "ClientIP"});
    let (key, rules) = planned_with("bad", "10.96.0.66", "TCP", &["10.244.1.6"], affinity);
    let mut rules = rules.unwrap();
    // A rule that jumps to a chain that does not exist.
    let chain = rules.chains.keys().next().unwrap().clone();
    rules
        .chains
        .get_mut(&chain)
        .unwrap()
        .push("jump no-such-chain".into());
    let services = vec![good, (key.clone(), Some(rules))];
    p.sync_all(|| full(&services)).unwrap();
    assert_eq!(frontends(&p), ["10.96.0.10 . tcp . 80"]);
    let rejected = p.rejected();
    assert!(
        rejected[&key].contains("No such file or directory"),
        "{rejected:?}"
    );
}
