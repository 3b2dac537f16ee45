//! The enforcement table: what it holds for the model cluster's pods, and
//! that nft takes it whole (in a scratch namespace) for every kind of
//! rule — peers by selectors and blocks, ports by number, range, name and
//! protocol, egress named ports as address-and-port pairs.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use weft_datapath::nft;
use weft_datapath::scratch::Namespaces;
use weft_policy::model::{namespace_labels, NamedPort, Pod, Policy, Protocol};
use weft_policy::rules::{script, TABLE};

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
    let text = script(&every_kind(), &pods(), &namespaces, "node-1");
    // x/a: isolated for ingress, no rule: everything new is dropped.
    assert!(
        text.contains("add rule ip weft-policy ingress ip daddr 10.244.1.2 jump ingress-0\n"),
        "{text}"
    );
    // Denials are logged for the agent (rate-limited), then dropped.
    assert!(
        text.contains(
            "add rule ip weft-policy ingress-0 limit rate 10/second burst 20 packets log prefix \"ingress\" group 2713\n\
             add rule ip weft-policy ingress-0 counter drop\n"
        ),
        "{text}"
    );
    // x/b: from y's pods or the block, on its named port, a range, any UDP, SCTP 9.
    for rule in [
        "ip saddr { 10.244.2.2 } meta l4proto tcp th dport 80 accept",
        "ip saddr 198.18.0.0/24 ip saddr != { 198.18.0.2/32 } meta l4proto tcp th dport 8000-8100 accept",
        "ip saddr { 10.244.2.2 } meta l4proto udp accept",
        "ip saddr 198.18.0.0/24 ip saddr != { 198.18.0.2/32 } meta l4proto sctp th dport 9 accept",
        // Egress: the named port of every pod that has it, as pairs.
        "meta l4proto udp ip daddr . th dport { 10.244.1.2 . 81, 10.244.1.3 . 81, 10.244.2.2 . 81 } return",
        "meta l4proto udp th dport 53 return",
    ] {
        assert!(text.contains(rule), "{rule} missing:\n{text}");
    }
    // y/a runs on node-2: nothing of it here.
    assert!(!text.contains("10.244.2.2 jump"), "{text}");
    let on_node_2 = script(&every_kind(), &pods(), &namespaces, "node-2");
    assert!(!on_node_2.contains("jump ingress-"), "{on_node_2}");
    // Without policies the table does not depend on pods (the agent then
    // skips reading them).
    assert_eq!(
        script(&[], &pods(), &namespaces, "node-1"),
        script(&[], &[], &Default::default(), "node-1")
    );
}

#[test]
fn nft_takes_the_table_and_a_rewrite_of_it() {
    let mut guard = Namespaces::new("wpol-rules");
    let (_, ns) = guard.add("n");
    let namespaces = namespaces();
    let text = script(&every_kind(), &pods(), &namespaces, "node-1");
    nft::apply(&text, Some(&ns)).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // Written again whole (another policy set): one transaction replaces it.
    let fewer = script(&every_kind()[..1], &pods(), &namespaces, "node-1");
    nft::apply(&fewer, Some(&ns)).unwrap();
    let listed = nft::run(&["list", "table", "ip", TABLE], Some(&ns)).unwrap();
    assert!(!listed.contains("8000-8100"), "{listed}");
    assert!(listed.contains("jump ingress-0"), "{listed}");
}
