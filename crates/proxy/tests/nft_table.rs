//! The proxy's generated nftables against the real `nft` and kernel, in a
//! scratch network namespace: every kind of Service is accepted, changes
//! are incremental, drift is noticed and a full sync converges from it.

mod common;

use common::{ctx, planned};
use serde_json::json;
use weft_datapath::scratch::Namespaces;
use weft_datapath::{nft, NetNs};
use weft_proxy::model::{endpoints_by_port, service_info};
use weft_proxy::plan::plan_service;
use weft_proxy::{Proxier, ServiceKey, ServiceRules};

/// One scratch namespace, removed when the guard drops.
fn scratch(tag: &str) -> (Namespaces, NetNs) {
    let mut guard = Namespaces::new(&format!("wpt-{tag}"));
    let (_, ns) = guard.add("x");
    (guard, ns)
}

fn all_kinds() -> Vec<(ServiceKey, ServiceRules)> {
    let two = [("10.244.1.2", "node-1"), ("10.244.2.2", "node-2")];
    vec![
        planned(
            "plain",
            json!({"clusterIP": "10.96.0.1", "ports": [{"name": "p", "port": 80}]}),
            &two,
        ),
        planned(
            "udp",
            json!({"clusterIP": "10.96.0.2", "ports": [{"name": "p", "port": 53, "protocol": "UDP"}]}),
            &two,
        ),
        planned(
            "sctp",
            json!({"clusterIP": "10.96.0.3", "ports": [{"name": "p", "port": 9, "protocol": "SCTP"}]}),
            &two,
        ),
        planned(
            "empty",
            json!({"type": "NodePort", "clusterIP": "10.96.0.4", "ports": [{"name": "p", "port": 80, "nodePort": 30004}]}),
            &[],
        ),
        planned(
            "sticky",
            json!({"clusterIP": "10.96.0.5", "sessionAffinity": "ClientIP", "ports": [{"name": "p", "port": 80}]}),
            &two,
        ),
        planned(
            "lb",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.0.6", "externalTrafficPolicy": "Local",
            "externalIPs": ["198.18.0.99"], "loadBalancerSourceRanges": ["198.18.0.0/28"],
            "ports": [{"name": "p", "port": 80, "nodePort": 30006}]}),
            &two,
        ),
        planned(
            "local",
            json!({"clusterIP": "10.96.0.7", "internalTrafficPolicy": "Local", "ports": [{"name": "p", "port": 80}]}),
            &[("10.244.2.2", "node-2")],
        ),
    ]
}

fn list(ns: &NetNs) -> String {
    nft::run(&["list", "table", "ip", "weft-proxy"], Some(ns)).expect("list table")
}

#[test]
fn every_kind_of_service_applies_and_converges() {
    let (_guard, ns) = scratch("all");
    ns.run_in(|| {
        let mut proxier = Proxier::new(ctx());
        let report = proxier.full_sync(all_kinds()).expect("full sync");
        assert_eq!(report.services, 7);
        assert!(!proxier.drifted().unwrap());
        let text = list(&ns);
        assert!(text.contains("numgen random mod 2"), "{text}");
        assert!(text.contains("dnat to 10.244.2.2:8080"), "{text}");
        assert!(
            text.contains("10.96.0.2 . udp . 53 : goto pick-udp-2"),
            "{text}"
        );
        assert!(text.contains("update @aff-"), "{text}");
        assert!(text.contains("tcp . 30004 : goto reject-chain"), "{text}");
        assert!(
            text.contains("198.18.0.240 . tcp . 80 : goto fw-"),
            "{text}"
        );
        assert!(
            text.contains("10.244.1.2 . 10.244.1.2"),
            "hairpin pair: {text}"
        );

        // One endpoint leaves one Service: only that chain is rewritten.
        let (plain, one) = planned(
            "plain",
            json!({"clusterIP": "10.96.0.1", "ports": [{"name": "p", "port": 80}]}),
            &[("10.244.2.2", "node-2")],
        );
        let report = proxier
            .apply(vec![(plain.clone(), Some(one.clone()))])
            .expect("apply");
        assert_eq!(
            report.chains_written, 3,
            "only the new shared pick for one endpoint"
        );
        let text = list(&ns);
        assert!(
            text.contains("10.96.0.1 . 80 . 0 : 10.244.2.2 . 8080"),
            "{text}"
        );
        assert!(
            text.contains("10.96.0.1 . tcp . 80 : goto pick-tcp-1"),
            "{text}"
        );
        assert!(!proxier.drifted().unwrap());
        // Deleting a Service removes its chain and elements.
        let key = ServiceKey {
            namespace: "demo".into(),
            name: "sticky".into(),
        };
        proxier.apply(vec![(key, None)]).expect("delete");
        let text = list(&ns);
        assert!(!text.contains("aff-"), "{text}");
        assert!(!text.contains("10.96.0.5"), "{text}");
        assert!(!proxier.drifted().unwrap());

        // The endpoint comes back: the one-endpoint pick lost its only user
        // and goes, maps and all ...
        let (_, two) = all_kinds().remove(0);
        proxier
            .apply(vec![(plain.clone(), Some(two))])
            .expect("apply");
        let text = list(&ns);
        assert!(!text.contains("pick-tcp-1"), "{text}");
        assert!(!text.contains("eps-tcp-1"), "{text}");
        assert!(!proxier.drifted().unwrap());
        // ... and leaves again, so the restart below has a pick to remove.
        proxier.apply(vec![(plain, Some(one))]).expect("apply");

        // Someone deletes a chain: drift; a new Proxier (an agent restart)
        // converges without flushing and removes what is no longer wanted.
        nft::apply("add chain ip weft-proxy svc-left-over\n", None).unwrap();
        assert!(proxier.drifted().unwrap());
        nft::apply("delete chain ip weft-proxy svc-left-over\n", None).unwrap();
        assert!(!proxier.drifted().unwrap());
        nft::apply("add chain ip weft-proxy svc-left-over\nadd set ip weft-proxy set-left-over { type ipv4_addr; }\n", None).unwrap();
        nft::apply("delete chain ip weft-proxy svc-left-over\n", None).unwrap();
        assert!(proxier.drifted().unwrap(), "a set nobody wants is drift too");
        nft::apply("add chain ip weft-proxy svc-left-over\n", None).unwrap();
        let mut restarted = Proxier::new(ctx());
        let report = restarted
            .full_sync(all_kinds()[..3].to_vec())
            .expect("resync");
        // lb's three chains, local's one, the left-over, and the pick
        // chains for one TCP endpoint nothing uses any more.
        assert_eq!(report.stale_chains, 3 + 1 + 1 + 3, "{report:?}");
        // The unused pick's two maps and the left-over set.
        assert_eq!(report.stale_sets, 2 + 1, "{report:?}");
        assert!(!restarted.drifted().unwrap());
        let text = list(&ns);
        assert!(!text.contains("svc-left-over"), "{text}");
        assert!(!text.contains("eps-tcp-1"), "the stale pick's maps: {text}");
        assert!(!text.contains("set-left-over"), "{text}");
    })
    .unwrap();
}

#[test]
fn a_second_service_cannot_steal_an_address_and_gets_it_once_free() {
    let (_guard, ns) = scratch("own");
    ns.run_in(|| {
        let mut proxier = Proxier::new(ctx());
        proxier.full_sync(vec![]).unwrap();
        let spec = json!({"clusterIP": "10.96.0.1", "externalIPs": ["198.18.0.50"], "ports": [{"name": "p", "port": 80}]});
        let first = planned("first", spec.clone(), &[("10.244.1.2", "node-1")]);
        let mut spec2 = spec;
        spec2["clusterIP"] = json!("10.96.0.2");
        let second = planned("second", spec2, &[("10.244.1.3", "node-1")]);
        proxier.apply(vec![first.clone()].into_iter().map(|(k, r)| (k, Some(r))).collect()).unwrap();
        proxier.apply(vec![(second.0.clone(), Some(second.1.clone()))]).unwrap();
        assert!(proxier.take_refused().is_empty(), "nothing released yet");
        proxier.apply(vec![(first.0.clone(), None)]).unwrap();
        let again = proxier.take_refused();
        assert_eq!(again.into_iter().collect::<Vec<_>>(), vec![second.0.clone()]);
        proxier.apply(vec![(second.0, Some(second.1))]).unwrap();
        assert!(list(&ns).contains("198.18.0.50 . tcp . 80 : goto pickx-tcp-1"));
    })
    .unwrap();
}

/// A Service read as if its names had never been validated (the model
/// refuses them; the table must not depend on that): any name.
fn named(namespace: &str, name: &str, cluster_ip: &str) -> (ServiceKey, ServiceRules) {
    let svc = serde_json::from_value(json!({
        "metadata": {"namespace": "demo", "name": "valid"},
        "spec": {"clusterIP": cluster_ip, "sessionAffinity": "ClientIP",
            "ports": [{"name": "p", "port": 80}]}
    }))
    .unwrap();
    let mut info = service_info(&svc).unwrap();
    info.key = ServiceKey {
        namespace: namespace.into(),
        name: name.into(),
    };
    info.ports[0].name = "p q".into();
    let slice = serde_json::from_value(json!({
        "metadata": {"namespace": namespace, "name": "s"},
        "addressType": "IPv4",
        "ports": [{"name": "p q", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.1.2"], "nodeName": "node-1"}]
    }))
    .unwrap();
    let rules = plan_service(&info, &endpoints_by_port(&[&slice]), &ctx());
    (info.key, rules)
}

#[test]
fn hostile_service_names_are_programmed_like_any_other() {
    let (_guard, ns) = scratch("name");
    ns.run_in(|| {
        let long = "a".repeat(250);
        let hostile = [
            named("demo", "bad name", "10.96.1.1"),
            named("demo", &long, "10.96.1.2"),
            named(&long, &long, "10.96.1.3"),
            named("demo", "x\"; flush ruleset; \"", "10.96.1.4"),
            named("demo", "tab\tnew\nline", "10.96.1.5"),
            named("démo", "ünïcode-名前", "10.96.1.6"),
            named("demo", "@set $var {}", "10.96.1.7"),
        ];
        let mut proxier = Proxier::new(ctx());
        let report = proxier.full_sync(hostile.to_vec()).expect("full sync");
        assert_eq!(report.services, hostile.len());
        assert!(!proxier.drifted().unwrap());
        let text = list(&ns);
        for ip in 1..=7 {
            assert!(
                text.contains(&format!("10.96.1.{ip} . tcp . 80 : goto svc-")),
                "10.96.1.{ip}: {text}"
            );
        }
        // And incrementally, next to a plain Service created afterwards.
        let mut proxier = Proxier::new(ctx());
        proxier.full_sync(vec![]).expect("empty sync");
        let mut changes: Vec<_> = hostile.into_iter().map(|(k, r)| (k, Some(r))).collect();
        changes.extend(all_kinds().into_iter().take(1).map(|(k, r)| (k, Some(r))));
        proxier.apply(changes).expect("incremental");
        assert!(list(&ns).contains("10.96.0.1 . tcp . 80 : goto pick-tcp-2"));
    })
    .unwrap();
}

/// `name`'s rules with one rule nft cannot parse (as a planner bug or an
/// unforeseen input would produce).
fn broken(name: &str, cluster_ip: &str) -> (ServiceKey, ServiceRules) {
    let (key, mut rules) = named("demo", name, cluster_ip);
    let chain = rules.chains.keys().next().unwrap().clone();
    rules
        .chains
        .get_mut(&chain)
        .unwrap()
        .push("this is not a rule".into());
    (key, rules)
}

#[test]
fn a_service_nft_rejects_is_left_out_and_every_other_one_programmed() {
    let (_guard, ns) = scratch("iso");
    ns.run_in(|| {
        let mut services = all_kinds();
        services.insert(2, broken("bad", "10.96.2.1"));
        services.push(broken("worse", "10.96.2.2"));
        let mut proxier = Proxier::new(ctx());
        let plans = services.clone();
        let report = proxier
            .sync_all(|| plans.clone())
            .expect("sync around the bad ones");
        assert_eq!(report.services, 7, "{report:?}");
        let rejected = proxier.rejected();
        let names: Vec<String> = rejected.keys().map(|k| k.to_string()).collect();
        assert_eq!(names, ["demo/bad", "demo/worse"]);
        assert!(
            rejected.values().all(|r| r.contains("this is not a rule")),
            "{rejected:?}"
        );
        assert!(!proxier.drifted().unwrap());
        let text = list(&ns);
        assert!(text.contains("10.96.0.7 . tcp . 80"), "{text}");
        assert!(!text.contains("10.96.2.1"), "{text}");

        // Later changes keep applying; the unchanged bad Service stays out
        // without failing them.
        let (plain, one) = planned(
            "plain",
            json!({"clusterIP": "10.96.0.1", "ports": [{"name": "p", "port": 80}]}),
            &[("10.244.2.2", "node-2")],
        );
        let (bad, still_bad) = broken("bad", "10.96.2.1");
        let created = named("demo", "created-later", "10.96.2.3");
        proxier
            .apply(vec![
                (plain, Some(one)),
                (bad.clone(), Some(still_bad)),
                (created.0, Some(created.1)),
            ])
            .expect("incremental apply next to a rejected Service");
        let text = list(&ns);
        assert!(
            text.contains("10.96.0.1 . 80 . 0 : 10.244.2.2 . 8080"),
            "{text}"
        );
        assert!(text.contains("10.96.2.3 . tcp . 80"), "{text}");
        assert!(!proxier.drifted().unwrap());

        // Fixed, it is programmed; deleted, it is forgotten.
        let (bad, fixed) = named("demo", "bad", "10.96.2.1");
        proxier.apply(vec![(bad, Some(fixed))]).expect("fixed");
        assert!(list(&ns).contains("10.96.2.1 . tcp . 80"));
        let worse = broken("worse", "10.96.2.2").0;
        proxier.apply(vec![(worse, None)]).expect("deleted");
        assert!(proxier.rejected().is_empty());
    })
    .unwrap();
}
