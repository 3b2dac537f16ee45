//! The verdicts on the upstream NetworkPolicy e2e suite's model cluster:
//! namespaces x, y, z (labelled `ns: <name>` and with
//! `kubernetes.io/metadata.name`), pods a, b, c in each (`pod: <name>`),
//! each serving TCP and UDP on 80 (named `serve-80-tcp`/`serve-80-udp`)
//! and 81. Expected outcomes are written out by hand from the API's
//! semantics, case by case.

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use weft_policy::api::ClusterNetworkPolicy;
use weft_policy::model::{
    Action, ClusterPolicy, NamedPort, NamespaceLabels, Pod, Policies, Policy, Protocol,
};
use weft_policy::verdict::{verdict, Connection, Decision, Party};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn pod(ns: &str, name: &str) -> Pod {
    let n = 1 + NAMESPACES.iter().position(|x| *x == ns).unwrap();
    let m = 2 + PODS.iter().position(|x| *x == name).unwrap();
    let port = |name: &str, port, protocol| NamedPort {
        name: name.into(),
        port,
        protocol,
    };
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        ip: Some(format!("10.244.{n}.{m}").parse().unwrap()),
        ports: vec![
            port("serve-80-tcp", 80, Protocol::Tcp),
            port("serve-80-udp", 80, Protocol::Udp),
            port("serve-81-tcp", 81, Protocol::Tcp),
            port("serve-81-udp", 81, Protocol::Udp),
        ],
        host_network: false,
        node: Some(format!("node-{n}")),
    }
}

fn namespaces() -> NamespaceLabels {
    NAMESPACES
        .iter()
        .map(|ns| {
            let labels = [
                ("ns".to_string(), ns.to_string()),
                ("kubernetes.io/metadata.name".to_string(), ns.to_string()),
            ];
            (ns.to_string(), labels.into())
        })
        .collect()
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Policy {
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"namespace": ns, "name": name}, "spec": spec
    }))
    .unwrap();
    Policy::read(&np)
}

/// "x/a" → the pod.
fn named(text: &str) -> Pod {
    let (ns, name) = text.split_once('/').unwrap();
    pod(ns, name)
}

fn allowed(policies: &[Policy], from: &str, to: &str, port: u16, protocol: Protocol) -> bool {
    let policies = Policies::network(policies.to_vec());
    allowed_under(&policies, from, to, port, protocol)
}

fn allowed_under(policies: &Policies, from: &str, to: &str, port: u16, protocol: Protocol) -> bool {
    let (from, to) = (named(from), named(to));
    let conn = Connection {
        from: Party::Pod(&from),
        to: Party::Pod(&to),
        port,
        protocol,
    };
    verdict(policies, &namespaces(), &conn).allowed()
}

/// The 9×9 matrix on one port and protocol: the pairs (from, to) that are
/// denied.
fn denied(policies: &[Policy], port: u16, protocol: Protocol) -> Vec<String> {
    denied_under(&Policies::network(policies.to_vec()), port, protocol)
}

fn denied_under(policies: &Policies, port: u16, protocol: Protocol) -> Vec<String> {
    let all: Vec<String> = NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect();
    let mut out = Vec::new();
    for from in &all {
        for to in &all {
            if !allowed_under(policies, from, to, port, protocol) {
                out.push(format!("{from}→{to}"));
            }
        }
    }
    out
}

/// Every pair whose destination is in `to` (and source in `from`).
fn pairs(from: &[&str], to: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for f in NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
    {
        for t in NAMESPACES
            .iter()
            .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        {
            if from.iter().any(|x| f == *x) && to.iter().any(|x| t == *x) {
                out.push(format!("{f}→{t}"));
            }
        }
    }
    out
}

const ALL: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

#[test]
fn without_policies_everything_is_allowed() {
    assert!(denied(&[], 80, Protocol::Tcp).is_empty());
}

#[test]
fn deny_all_ingress_isolates_only_the_selected_pods() {
    let p = [policy("x", "deny", json!({"podSelector": {}}))];
    assert_eq!(
        denied(&p, 80, Protocol::Tcp),
        pairs(&ALL, &["x/a", "x/b", "x/c"])
    );
    // Only ingress: x's pods still reach out.
    assert!(allowed(&p, "x/a", "y/b", 80, Protocol::Tcp));
    // A pod selector narrows it to x/a.
    let p = [policy(
        "x",
        "deny-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    )];
    assert_eq!(denied(&p, 81, Protocol::Udp), pairs(&ALL, &["x/a"]));
}

#[test]
fn the_own_node_always_reaches_an_isolated_pod() {
    let p = [policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )];
    let a = pod("x", "a");
    let from_node = Connection {
        from: Party::OwnNode,
        to: Party::Pod(&a),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let v = verdict(&Policies::network(p.to_vec()), &namespaces(), &from_node);
    assert_eq!(v.ingress, Decision::OwnNode);
    assert!(v.allowed());
    // Another address (a node masquerading NodePort traffic) is not it.
    let masqueraded = Connection {
        from: Party::Address("198.18.0.12".parse().unwrap()),
        ..from_node
    };
    assert!(!verdict(&Policies::network(p.to_vec()), &namespaces(), &masqueraded).allowed());
}

#[test]
fn ingress_from_the_same_namespace_only() {
    let p = [policy(
        "x",
        "same-ns",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    )];
    assert_eq!(
        denied(&p, 80, Protocol::Tcp),
        pairs(
            &["y/a", "y/b", "y/c", "z/a", "z/b", "z/c"],
            &["x/a", "x/b", "x/c"]
        )
    );
}

#[test]
fn namespace_and_pod_selectors_in_one_peer_are_and_in_two_peers_or() {
    let and = [policy(
        "x",
        "and",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}
        ]}]}),
    )];
    let into_a: Vec<&str> = ALL.iter().copied().filter(|p| *p != "y/b").collect();
    assert_eq!(denied(&and, 80, Protocol::Tcp), pairs(&into_a, &["x/a"]));
    let or = [policy(
        "x",
        "or",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}
        ]}]}),
    )];
    // Every pod of y, and b of x (the policy's own namespace).
    assert_eq!(
        denied(&or, 80, Protocol::Tcp),
        pairs(&["x/a", "x/c", "z/a", "z/b", "z/c"], &["x/a"])
    );
}

#[test]
fn match_expressions_select_namespaces() {
    let p = [policy(
        "x",
        "not-y",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
            {"key": "ns", "operator": "NotIn", "values": ["y"]}
        ]}}]}]}),
    )];
    assert_eq!(
        denied(&p, 80, Protocol::Tcp),
        pairs(&["y/a", "y/b", "y/c"], &["x/a", "x/b", "x/c"])
    );
}

#[test]
fn ip_blocks_with_exceptions() {
    // z's pods are 10.244.3.0/24; z/b (10.244.3.3) is excepted.
    let p = [policy(
        "x",
        "block",
        json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.3.0/24", "except": ["10.244.3.3/32"]}}]}]}),
    )];
    assert_eq!(
        denied(&p, 80, Protocol::Tcp),
        pairs(
            &["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/b"],
            &["x/a", "x/b", "x/c"]
        )
    );
    let outside = pod("x", "a");
    let from_outside = |ip: &str| Connection {
        from: Party::Address(ip.parse::<IpAddr>().unwrap()),
        to: Party::Pod(&outside),
        port: 80,
        protocol: Protocol::Tcp,
    };
    assert!(verdict(
        &Policies::network(p.to_vec()),
        &namespaces(),
        &from_outside("10.244.3.200")
    )
    .allowed());
    assert!(!verdict(
        &Policies::network(p.to_vec()),
        &namespaces(),
        &from_outside("198.18.0.2")
    )
    .allowed());
}

#[test]
fn ports_by_number_name_range_and_protocol() {
    let only = |ports: serde_json::Value| {
        [policy(
            "x",
            "ports",
            json!({"podSelector": {}, "ingress": [{"ports": ports}]}),
        )]
    };
    let p = only(json!([{"port": 80}]));
    assert!(allowed(&p, "y/a", "x/a", 80, Protocol::Tcp));
    assert!(
        !allowed(&p, "y/a", "x/a", 80, Protocol::Udp),
        "protocol defaults to TCP"
    );
    assert!(!allowed(&p, "y/a", "x/a", 81, Protocol::Tcp));
    let p = only(json!([{"port": "serve-81-udp", "protocol": "UDP"}]));
    assert!(allowed(&p, "y/a", "x/a", 81, Protocol::Udp));
    assert!(!allowed(&p, "y/a", "x/a", 80, Protocol::Udp));
    // A name the destination does not declare matches nothing.
    let p = only(json!([{"port": "serve-99-tcp"}]));
    assert!(!allowed(&p, "y/a", "x/a", 80, Protocol::Tcp));
    let p = only(json!([{"port": 80, "endPort": 81}]));
    assert!(allowed(&p, "y/a", "x/a", 81, Protocol::Tcp));
    let p = only(json!([{"protocol": "UDP"}]));
    assert!(allowed(&p, "y/a", "x/a", 81, Protocol::Udp));
    assert!(!allowed(&p, "y/a", "x/a", 81, Protocol::Tcp));
    let p = only(json!([{"port": 81, "protocol": "SCTP"}]));
    assert!(allowed(&p, "y/a", "x/a", 81, Protocol::Sctp));
}

#[test]
fn egress_is_isolated_by_its_rules_or_its_policy_type() {
    // Egress rules alone make the policy an egress policy (defaulting).
    let p = [policy(
        "x",
        "to-y",
        json!({"podSelector": {}, "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    )];
    // The defaulted types are Ingress and Egress: x reaches only y, and
    // accepts nothing (no ingress rule).
    let x = ["x/a", "x/b", "x/c"];
    let mut want = pairs(&x, &["x/a", "x/b", "x/c", "z/a", "z/b", "z/c"]);
    want.extend(pairs(&["y/a", "y/b", "y/c", "z/a", "z/b", "z/c"], &x));
    want.sort();
    let mut got = denied(&p, 80, Protocol::Tcp);
    got.sort();
    assert_eq!(got, want);
    // Egress only, by policyTypes: ingress stays open.
    let p = [policy(
        "x",
        "no-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )];
    assert!(allowed(&p, "y/a", "x/a", 80, Protocol::Tcp));
    assert!(!allowed(&p, "x/a", "x/b", 80, Protocol::Tcp));
}

#[test]
fn policies_add_up() {
    let p = [
        policy("x", "deny", json!({"podSelector": {}})),
        policy(
            "x",
            "from-y-a",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
        ),
        policy(
            "x",
            "to-c-on-81",
            json!({"podSelector": {"matchLabels": {"pod": "c"}}, "ingress": [{"ports": [{"port": 81}]}]}),
        ),
    ];
    assert!(allowed(&p, "y/a", "x/b", 80, Protocol::Tcp));
    assert!(!allowed(&p, "y/b", "x/b", 80, Protocol::Tcp));
    assert!(allowed(&p, "y/b", "x/c", 81, Protocol::Tcp));
    assert!(!allowed(&p, "y/b", "x/c", 80, Protocol::Tcp));
}

#[test]
fn host_network_pods_are_not_subject_and_not_selected_as_pods() {
    let p = [policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )];
    let mut host = pod("x", "a");
    host.host_network = true;
    let b = pod("y", "b");
    let conn = Connection {
        from: Party::Pod(&host),
        to: Party::Pod(&b),
        port: 80,
        protocol: Protocol::Tcp,
    };
    assert!(verdict(&Policies::network(p.to_vec()), &namespaces(), &conn).allowed());
    let same_ns = [policy(
        "y",
        "from-x-pods",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
    )];
    assert!(!verdict(&Policies::network(same_ns.to_vec()), &namespaces(), &conn).allowed());
}

#[test]
fn parts_that_cannot_be_read_allow_nothing_and_are_reported() {
    let p = policy(
        "x",
        "broken",
        json!({"podSelector": {}, "ingress": [
            {"from": [{"ipBlock": {"cidr": "10.244.2.0/24", "except": ["junk"]}}]},
            {"ports": [{"port": 80, "protocol": "ICMP"}]},
            {"ports": [{"port": "http", "endPort": 90}]}
        ]}),
    );
    assert_eq!(p.problems.len(), 3, "{:?}", p.problems);
    assert!(
        p.problems[0].contains("spec.ingress[0].from[0].ipBlock.except"),
        "{:?}",
        p.problems
    );
    let p = [p];
    assert_eq!(
        denied(&p, 80, Protocol::Tcp),
        pairs(&ALL, &["x/a", "x/b", "x/c"])
    );
}

#[test]
fn explanations_name_the_policies_and_rules() {
    let p = [
        policy("x", "default-deny", json!({"podSelector": {}})),
        policy(
            "x",
            "allow-b",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"ports": [{"port": 81}]}, {"from": [{"podSelector": {}}]}]}),
        ),
    ];
    let (ya, xa, xb) = (pod("y", "a"), pod("x", "a"), pod("x", "b"));
    let conn = |from, to, port| Connection {
        from: Party::Pod(from),
        to: Party::Pod(to),
        port,
        protocol: Protocol::Tcp,
    };
    let denied = conn(&ya, &xa, 80);
    assert_eq!(
        verdict(&Policies::network(p.to_vec()), &namespaces(), &denied).explain(&denied),
        "denied y/a → x/a:80/TCP: egress of y/a is not isolated; ingress of x/a is isolated by x/default-deny and no rule allows y/a"
    );
    let allowed = conn(&ya, &xb, 81);
    assert_eq!(
        verdict(&Policies::network(p.to_vec()), &namespaces(), &allowed).explain(&allowed),
        "allowed y/a → x/b:81/TCP: egress of y/a is not isolated; ingress of x/b allowed by x/allow-b rule ingress[0]"
    );
    let still = conn(&ya, &xb, 80);
    let text = verdict(&Policies::network(p.to_vec()), &namespaces(), &still).explain(&still);
    assert!(
        text.contains("isolated by x/default-deny, x/allow-b"),
        "{text}"
    );
}

// ClusterNetworkPolicy tiers: Admin → NetworkPolicy → Baseline → allow.

fn cluster(name: &str, tier: &str, priority: i32, rest: serde_json::Value) -> ClusterPolicy {
    let mut spec = json!({"tier": tier, "priority": priority});
    spec.as_object_mut()
        .unwrap()
        .extend(rest.as_object().unwrap().clone());
    let cnp: ClusterNetworkPolicy =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    ClusterPolicy::read(&cnp).unwrap()
}

/// Subject: namespace `ns`.
fn in_ns(ns: &str) -> serde_json::Value {
    json!({"namespaces": {"matchLabels": {"ns": ns}}})
}

#[test]
fn an_admin_deny_cannot_be_reopened_by_a_network_policy() {
    let deny = cluster(
        "deny-y-to-x",
        "Admin",
        10,
        json!({"subject": in_ns("x"), "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    let allow_all = policy(
        "x",
        "allow-all",
        json!({"podSelector": {}, "ingress": [{}]}),
    );
    let p = Policies::new(vec![allow_all], vec![deny]);
    assert_eq!(
        denied_under(&p, 80, Protocol::Tcp),
        pairs(&["y/a", "y/b", "y/c"], &["x/a", "x/b", "x/c"])
    );
    let (ya, xa) = (pod("y", "a"), pod("x", "a"));
    let conn = Connection {
        from: Party::Pod(&ya),
        to: Party::Pod(&xa),
        port: 80,
        protocol: Protocol::Tcp,
    };
    assert_eq!(
        verdict(&p, &namespaces(), &conn).explain(&conn),
        "denied y/a → x/a:80/TCP: egress of y/a is not isolated; ingress of x/a denied by ClusterNetworkPolicy deny-y-to-x (Admin tier) rule ingress[0]"
    );
}

#[test]
fn an_admin_pass_leaves_the_decision_to_network_policy_then_baseline() {
    // Admin: pass from z, deny from everything else (x itself included).
    let admin = cluster(
        "pass-z",
        "Admin",
        1,
        json!({"subject": in_ns("x"), "ingress": [
            {"action": "Pass", "from": [{"namespaces": {"matchLabels": {"ns": "z"}}}]},
            {"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    // x/a only from z/a by NetworkPolicy; the rest of x by Baseline: deny z/c.
    let np = policy(
        "x",
        "a-from-z-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "z"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    );
    let baseline = cluster(
        "baseline",
        "Baseline",
        1,
        json!({"subject": in_ns("x"), "ingress": [{"action": "Deny", "from": [
            {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}}]}]}),
    );
    let p = Policies::new(vec![np], vec![baseline, admin]);
    let mut want = pairs(
        &["x/a", "x/b", "x/c", "y/a", "y/b", "y/c"],
        &["x/a", "x/b", "x/c"],
    );
    want.extend(pairs(&["z/b", "z/c"], &["x/a"]));
    want.extend(pairs(&["z/c"], &["x/b", "x/c"]));
    want.sort();
    let mut got = denied_under(&p, 80, Protocol::Tcp);
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn a_network_policy_overrides_a_baseline_deny() {
    let baseline = cluster(
        "default-deny",
        "Baseline",
        0,
        json!({"subject": {"pods": {"namespaceSelector": {}, "podSelector": {}}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let np = policy(
        "y",
        "allow-x",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
    );
    let p = Policies::new(vec![np], vec![baseline]);
    // Every pod is denied everything, except y's pods, which take x's.
    let mut want = pairs(&ALL, &["x/a", "x/b", "x/c", "z/a", "z/b", "z/c"]);
    want.extend(pairs(
        &["y/a", "y/b", "y/c", "z/a", "z/b", "z/c"],
        &["y/a", "y/b", "y/c"],
    ));
    want.sort();
    let mut got = denied_under(&p, 80, Protocol::Tcp);
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn priorities_then_names_then_rule_order_decide() {
    let from_y = json!([{"namespaces": {"matchLabels": {"ns": "y"}}}]);
    let rule = |action: &str| json!({"action": action, "from": from_y});
    let accept_81 = json!({"action": "Accept", "from": from_y, "protocols": [{"tcp": {"destinationPort": {"number": 81}}}]});
    // Lower priority first, whatever the order given.
    let deny = cluster(
        "b-deny",
        "Admin",
        20,
        json!({"subject": in_ns("x"), "ingress": [rule("Deny")]}),
    );
    let accept = cluster(
        "a-accept",
        "Admin",
        30,
        json!({"subject": in_ns("x"), "ingress": [rule("Accept")]}),
    );
    let p = Policies::new(vec![], vec![accept.clone(), deny.clone()]);
    assert!(!allowed_under(&p, "y/a", "x/a", 80, Protocol::Tcp));
    let mut first = accept.clone();
    first.priority = 10;
    let p = Policies::new(vec![], vec![deny.clone(), first]);
    assert!(allowed_under(&p, "y/a", "x/a", 80, Protocol::Tcp));
    // Equal priorities: by name.
    let mut tied = accept.clone();
    tied.priority = 20;
    let p = Policies::new(vec![], vec![deny, tied]);
    assert!(
        allowed_under(&p, "y/a", "x/a", 80, Protocol::Tcp),
        "a-accept sorts before b-deny"
    );
    // Within a policy, the first matching rule.
    let ordered = cluster(
        "ordered",
        "Admin",
        0,
        json!({"subject": in_ns("x"), "ingress": [accept_81, rule("Deny")]}),
    );
    let p = Policies::new(vec![], vec![ordered]);
    assert!(allowed_under(&p, "y/a", "x/a", 81, Protocol::Tcp));
    assert!(!allowed_under(&p, "y/a", "x/a", 80, Protocol::Tcp));
    assert!(!allowed_under(&p, "y/a", "x/a", 81, Protocol::Udp));
}

#[test]
fn egress_to_networks_and_an_accepted_egress_still_needs_the_ingress() {
    let to_z = cluster(
        "x-only-to-node-3",
        "Admin",
        0,
        json!({"subject": in_ns("x"), "egress": [
            {"action": "Accept", "to": [{"networks": ["10.244.3.0/24"]}]},
            {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    );
    let z_denies_a = policy(
        "z",
        "deny-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
    );
    let p = Policies::new(vec![z_denies_a], vec![to_z]);
    let mut want = pairs(
        &["x/a", "x/b", "x/c"],
        &["x/a", "x/b", "x/c", "y/a", "y/b", "y/c"],
    );
    want.extend(pairs(&ALL, &["z/a"]));
    want.sort();
    want.dedup();
    let mut got = denied_under(&p, 80, Protocol::Tcp);
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn unreadable_peers_fail_closed() {
    // `nodes` is not in the standard channel: the peer reads empty.
    let accept = cluster(
        "accept-nodes",
        "Admin",
        0,
        json!({"subject": in_ns("x"), "egress": [{"action": "Accept", "to": [{"nodes": {}}]}],
               "ingress": [{"action": "Accept", "from": [{"namespaces": {}}], "protocols": [{"destinationNamedPort": "serve-80-tcp"}]}]}),
    );
    assert!(!accept.problems.is_empty());
    let deny_all = policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    // The Accepts match nothing: NetworkPolicy still denies.
    let p = Policies::new(vec![deny_all], vec![accept]);
    assert!(!allowed_under(&p, "x/a", "y/a", 80, Protocol::Tcp));
    assert!(!allowed_under(&p, "y/a", "x/a", 80, Protocol::Tcp));
    // A Deny with an unread peer denies every peer.
    let deny = cluster(
        "deny-nodes",
        "Admin",
        0,
        json!({"subject": in_ns("x"), "egress": [{"action": "Deny", "to": [{"domainNames": ["example.org"]}]}]}),
    );
    let p = Policies::new(vec![], vec![deny]);
    assert_eq!(
        denied_under(&p, 80, Protocol::Tcp),
        pairs(&["x/a", "x/b", "x/c"], &ALL)
    );
}

#[test]
fn a_pass_that_cannot_be_read_denies_everything() {
    // Pass to NetworkPolicy for `nodes` (experimental), then Deny all:
    // read as a Pass of everything, the egress would go on to the
    // (allowing) later tiers; failing closed, it is denied.
    let admin = cluster(
        "pass-nodes",
        "Admin",
        0,
        json!({"subject": in_ns("x"), "egress": [
            {"action": "Pass", "to": [{"nodes": {}}]},
            {"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    );
    assert_eq!(admin.egress[0].action, Action::Deny);
    let p = Policies::new(vec![], vec![admin]);
    assert!(!allowed_under(&p, "x/a", "y/a", 80, Protocol::Tcp));
    // So does one with a protocol it cannot read, next to one it can.
    let named = cluster(
        "pass-named",
        "Baseline",
        0,
        json!({"subject": in_ns("x"), "ingress": [{"action": "Pass", "from": [{"namespaces": {}}],
               "protocols": [{"tcp": {"destinationPort": {"number": 80}}}, {"destinationNamedPort": "http"}]}]}),
    );
    let p = Policies::new(vec![], vec![named]);
    assert!(!allowed_under(&p, "y/a", "x/a", 81, Protocol::Udp));
    // And a Deny whose selector the API would not accept (the CRD's
    // schema does not check them), which must not match nothing.
    let bad_selector = cluster(
        "deny-bad-selector",
        "Admin",
        0,
        json!({"subject": in_ns("x"), "ingress": [{"action": "Deny", "from": [
            {"namespaces": {"matchExpressions": [{"key": "ns", "operator": "in", "values": ["y"]}]}}]}]}),
    );
    let p = Policies::new(vec![], vec![bad_selector]);
    assert_eq!(
        denied_under(&p, 80, Protocol::Tcp),
        pairs(&ALL, &["x/a", "x/b", "x/c"])
    );
}

#[test]
fn an_admin_accept_overrides_a_network_policy_and_egress_still_needs_the_ingress() {
    // x's pods accept y/a by Admin, whatever x's deny-all says.
    let accept = cluster(
        "accept-y-a",
        "Admin",
        0,
        json!({"subject": in_ns("x"), "ingress": [{"action": "Accept", "from": [
            {"pods": {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "a"}}}}]}],
               "egress": [{"action": "Accept", "to": [{"namespaces": {}}]}]}),
    );
    let deny_all = policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let z_deny_all = policy("z", "deny-all", json!({"podSelector": {}}));
    let p = Policies::new(vec![deny_all, z_deny_all], vec![accept]);
    assert!(allowed_under(&p, "y/a", "x/b", 80, Protocol::Tcp));
    assert!(!allowed_under(&p, "y/b", "x/b", 80, Protocol::Tcp));
    // x's egress is Accepted past its deny-all, to y; z's ingress still
    // denies it.
    assert!(allowed_under(&p, "x/a", "y/c", 80, Protocol::Tcp));
    assert!(!allowed_under(&p, "x/a", "z/c", 80, Protocol::Tcp));
}

#[test]
fn a_baseline_pass_allows() {
    let baseline = cluster(
        "pass-then-deny",
        "Baseline",
        0,
        json!({"subject": in_ns("x"), "ingress": [
            {"action": "Pass", "from": [{"namespaces": {"matchLabels": {"ns": "y"}}}]},
            {"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let p = Policies::new(vec![], vec![baseline]);
    assert!(allowed_under(&p, "y/a", "x/a", 80, Protocol::Tcp));
    assert!(!allowed_under(&p, "z/a", "x/a", 80, Protocol::Tcp));
}
