//! The enforcement table: what it holds for the model cluster's pods, and
//! that nft takes it whole (in a scratch namespace) for every kind of
//! rule — peers by selectors and blocks, ports by number, range, name and
//! protocol, egress named ports as address-and-port pairs.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use weft_datapath::nft;
use weft_datapath::scratch::Namespaces;
use weft_policy::api::ClusterNetworkPolicy;
use weft_policy::model::{
    namespace_labels, ClusterPolicy, NamedPort, Pod, Policies, Policy, Protocol,
};
use weft_policy::rules::{script, table, TABLE};

fn pod(ns: &str, name: &str, ip: &str, node: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: [("pod".to_string(), name.to_string())].into(),
        ip: Some(ip.parse().unwrap()),
        ports: vec![
            NamedPort {
                name: "serve-80-tcp".into(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            NamedPort {
                name: "serve-81-udp".into(),
                port: 81,
                protocol: Protocol::Udp,
            },
        ],
        host_network: false,
        node: Some(node.into()),
    }
}

fn pods() -> Vec<Pod> {
    vec![
        pod("x", "a", "10.244.1.2", "node-1"),
        pod("x", "b", "10.244.1.3", "node-1"),
        pod("y", "a", "10.244.2.2", "node-2"),
    ]
}

/// x and y, as Namespace objects.
fn namespaces() -> weft_policy::model::NamespaceLabels {
    let objects: Vec<Namespace> = ["x", "y"]
        .iter()
        .map(|n| serde_json::from_value(json!({"metadata": {"name": n}})).unwrap())
        .collect();
    namespace_labels(&objects)
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> Policy {
    let np: NetworkPolicy =
        serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
            .unwrap();
    Policy::read(&np)
}

fn every_kind() -> Vec<Policy> {
    vec![
        policy(
            "x",
            "deny-a",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}}),
        ),
        policy(
            "x",
            "b-from-y",
            json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}},
                                      {"ipBlock": {"cidr": "198.18.0.0/24", "except": ["198.18.0.2/32"]}}],
                             "ports": [{"port": "serve-80-tcp"}, {"port": 8000, "endPort": 8100}, {"protocol": "UDP"}, {"port": 9, "protocol": "SCTP"}]}],
                "egress": [{"to": [{"podSelector": {}, "namespaceSelector": {}}], "ports": [{"port": "serve-81-udp", "protocol": "UDP"}]},
                           {"ports": [{"port": 53, "protocol": "UDP"}]}]}),
        ),
    ]
}

#[test]
fn only_this_nodes_isolated_pods_get_chains() {
    let namespaces = namespaces();
    let text = script(
        &Policies::network(every_kind()),
        &pods(),
        &namespaces,
        "node-1",
    );
    // x/a: isolated for ingress, no rule: everything new is logged (for
    // the agent, rate-limited), then dropped.
    for line in [
        "add rule ip weft-policy ingress ip daddr @ingress-1-pods jump ingress-1\n",
        "add rule ip weft-policy ingress-1 limit name \"denials\" log prefix \"ingress\" group 2713\n\
         add rule ip weft-policy ingress-1 counter drop\n",
        "add element ip weft-policy ingress-1-pods { 10.244.1.2 }\n",
        "add limit ip weft-policy denials { rate 20/second burst 40 packets ; }\n",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    // x/b: from y's pods (a set) or the block, on its named port, a range,
    // any UDP, SCTP 9.
    for rule in [
        "ingress-0 ip saddr @peer-0 meta l4proto tcp th dport 80 accept",
        "ingress-0 ip saddr 198.18.0.0/24 ip saddr != { 198.18.0.2/32 } meta l4proto tcp th dport 8000-8100 accept",
        "ingress-0 ip saddr @peer-0 meta l4proto udp accept",
        "ingress-0 ip saddr 198.18.0.0/24 ip saddr != { 198.18.0.2/32 } meta l4proto sctp th dport 9 accept",
        "add element ip weft-policy peer-0 { 10.244.2.2 }",
        // Egress: the named port of every pod that has it, as pairs.
        "egress-0 meta l4proto udp ip daddr . th dport @named-0 return",
        "add element ip weft-policy named-0 { 10.244.1.2 . 81, 10.244.1.3 . 81, 10.244.2.2 . 81 }",
        "egress-0 meta l4proto udp th dport 53 return",
    ] {
        assert!(text.contains(rule), "{rule} missing:\n{text}");
    }
    // The egress rule to named ports only needs its pairs, not its peer's
    // addresses: no set for that peer.
    assert!(!text.contains("peer-1"), "{text}");
    // y/a runs on node-2: nothing of it here.
    assert!(!text.contains("-pods { 10.244.2.2"), "{text}");
    let on_node_2 = script(
        &Policies::network(every_kind()),
        &pods(),
        &namespaces,
        "node-2",
    );
    assert!(!on_node_2.contains("jump ingress-"), "{on_node_2}");
    // Without policies the table does not depend on pods (the agent then
    // skips reading them).
    assert_eq!(
        script(&Policies::default(), &pods(), &namespaces, "node-1"),
        script(&Policies::default(), &[], &Default::default(), "node-1")
    );
}

/// Pods coming, going and changing labels change set elements only: the
/// structure (what needs a rewrite) stays while the chains' rules do.
#[test]
fn pods_change_elements_not_chains() {
    let namespaces = namespaces();
    let before = table(
        &Policies::network(every_kind()),
        &pods(),
        &namespaces,
        "node-1",
    );
    let mut more = pods();
    more.push(pod("y", "new", "10.244.2.9", "node-2"));
    more.push(pod("x", "b2", "10.244.1.9", "node-1"));
    more[4].labels = [("pod".to_string(), "b".to_string())].into();
    let after = table(
        &Policies::network(every_kind()),
        &more,
        &namespaces,
        "node-1",
    );
    assert_eq!(before.structure, after.structure);
    assert_ne!(before.elements, after.elements);
    let local_b: Vec<String> = after.elements["ingress-0-pods"]
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert_eq!(local_b, ["Addr(10.244.1.3)", "Addr(10.244.1.9)"]);
    assert!(after.elements["peer-0"].len() == 2, "{:?}", after.elements);
    // A policy change is a structural change.
    let fewer = table(
        &Policies::network(every_kind()[..1].to_vec()),
        &more,
        &namespaces,
        "node-1",
    );
    assert_ne!(fewer.structure, after.structure);
}

#[test]
fn nft_takes_the_table_and_a_rewrite_of_it() {
    let mut guard = Namespaces::new("wpol-rules");
    let (_, ns) = guard.add("n");
    let namespaces = namespaces();
    let text = script(
        &Policies::network(every_kind()),
        &pods(),
        &namespaces,
        "node-1",
    );
    nft::apply(&text, Some(&ns)).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // Written again whole (another policy set): one transaction replaces it.
    let fewer = script(
        &Policies::network(every_kind()[..1].to_vec()),
        &pods(),
        &namespaces,
        "node-1",
    );
    nft::apply(&fewer, Some(&ns)).unwrap();
    let listed = nft::run(&["list", "table", "ip", TABLE], Some(&ns)).unwrap();
    assert!(!listed.contains("8000-8100"), "{listed}");
    assert!(listed.contains("jump ingress-0"), "{listed}");
    assert!(listed.contains("elements = { 10.244.1.2 }"), "{listed}");
}

/// Cluster-wide policies: Admin rules first, a Pass going to the pod's
/// NetworkPolicy (or Baseline) chain, Deny to the shared log-and-drop
/// chain; nft takes it.
fn tiers() -> Policies {
    let cnp = |name: &str, spec: serde_json::Value| {
        let cnp: ClusterNetworkPolicy =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
        ClusterPolicy::read(&cnp).unwrap()
    };
    let x = json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}});
    let admin = cnp(
        "admin",
        json!({"tier": "Admin", "priority": 5, "subject": x, "ingress": [
            {"action": "Pass", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]},
            {"action": "Accept", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "b"}}}}],
             "protocols": [{"tcp": {"destinationPort": {"range": {"start": 80, "end": 81}}}}]},
            {"action": "Deny", "from": [{"namespaces": {}}]}],
          "egress": [{"action": "Deny", "to": [{"networks": ["198.18.0.0/15"]}]}]}),
    );
    let baseline = cnp(
        "baseline",
        json!({"tier": "Baseline", "priority": 0, "subject": x,
               "egress": [{"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"udp": {}}]}]}),
    );
    Policies::new(every_kind(), vec![baseline, admin])
}

#[test]
fn cluster_wide_tiers_come_around_network_policy() {
    let namespaces = namespaces();
    let text = script(&tiers(), &pods(), &namespaces, "node-1");
    for line in [
        // x/a (NetworkPolicy: deny all): Admin first, a Pass goes to its
        // NetworkPolicy chain, which ends in its own denial tail. The
        // Pass's peer (namespace y) is the set x/b's NetworkPolicy uses.
        "add rule ip weft-policy ingress-1 ip saddr @peer-0 goto ingress-passed-1",
        "add rule ip weft-policy ingress-1 ip saddr @peer-1 meta l4proto tcp th dport 80-81 accept",
        "add rule ip weft-policy ingress-1 ip saddr @peer-2 goto ingress-denied",
        "add rule ip weft-policy ingress-1 goto ingress-passed-1",
        "add rule ip weft-policy ingress-passed-1 limit name \"denials\" log prefix \"ingress\" group 2713",
        "add rule ip weft-policy ingress-denied counter drop",
        // Egress of x/a (no NetworkPolicy egress): Admin's deny of the
        // block, then Baseline's.
        "add rule ip weft-policy egress-0 ip daddr 198.18.0.0/15 goto egress-denied",
        "add rule ip weft-policy egress-0 ip daddr @peer-2 meta l4proto udp goto egress-denied",
        // x/b's egress is its NetworkPolicy's: Baseline is not asked.
        "add rule ip weft-policy egress-1 ip daddr 198.18.0.0/15 goto egress-denied\n\
         add rule ip weft-policy egress-1 meta l4proto udp ip daddr . th dport @named-0 return",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    let mut guard = Namespaces::new("wpol-tiers");
    let (_, ns) = guard.add("n");
    nft::apply(&text, Some(&ns)).unwrap_or_else(|e| panic!("{e}\n{text}"));
}
