//! flannel nodes in a lab: `weft lab up --control-plane kubernetes
//! --network flannel` runs the real flanneld on every node, with either
//! subnet store (the API server's Nodes, or the lab's etcd in flannel's
//! layout), and `weft lab node add` mixes in a weft node. Pods on flannel
//! nodes are wired as flannel's CNI chain wires them (the reference bridge
//! and host-local plugins on flanneld's subnet); every pod reaches every
//! other, and a node removed leaves the others' routes.

mod common;

use common::{Lab, Mode};
use rstest::rstest;
use serde_json::Value;

/// Pods a, b and c, on node-1, node-2 and node-3.
const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  nodeName: node-1
  containers: [{name: c, image: agnhost, args: [netexec, --http-port=8080], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  nodeName: node-2
  containers: [{name: c, image: agnhost, args: [netexec, --http-port=8080], ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: c}
spec:
  nodeName: node-3
  containers: [{name: c, image: agnhost, args: [netexec, --http-port=8080], ports: [{containerPort: 8080}]}]
";

#[rstest]
#[case::kube_subnet_mgr("flc", "cluster", "vxlan")]
#[case::etcd("fle", "etcd", "vxlan")]
#[case::etcd_host_gw("fleh", "etcd", "host-gw")]
fn flannel_nodes_and_a_weft_node_mesh_and_see_a_node_leave(
    #[case] tag: &str,
    #[case] store: &str,
    #[case] backend: &str,
) {
    let lab = Lab::up_with_in(
        Mode::Kubernetes,
        tag,
        &[
            "--nodes",
            "2",
            "--network",
            "flannel",
            "--subnet-store",
            store,
            "--backend",
            backend,
        ],
    );
    lab.ok(&["node", "add", "node-3"]);
    lab.apply_ok(PODS);
    // node-1 and node-2 run flanneld, node-3 weft's agent.
    for (node, process) in [
        ("node-1", "flannel"),
        ("node-2", "flannel"),
        ("node-3", "weft"),
    ] {
        let agent = std::fs::read_to_string(format!(
            "/run/weft/labs/{}/nodes/{node}/agent.log",
            lab.name
        ))
        .unwrap();
        let flanneld = agent.contains("main.go");
        assert_eq!(flanneld, process == "flannel", "{node}: {agent}");
    }
    let addresses: Vec<Value> = lab
        .pods()
        .iter()
        .map(|p| p["status"]["podIP"].clone())
        .collect();
    assert!(addresses.iter().all(Value::is_string), "{addresses:?}");
    // Each node's POD-CIDR is the subnet its agent holds (with etcd, its
    // lease there, not node IPAM's podCIDR), and so holds its pod.
    let nodes = lab.ok(&["get", "nodes"]);
    for (node, pod) in [("node-1", "a"), ("node-2", "b"), ("node-3", "c")] {
        let row = nodes.lines().find(|l| l.starts_with(node)).unwrap();
        let cidr: ipnet::Ipv4Net = row.split_whitespace().nth(3).unwrap().parse().unwrap();
        let ip: std::net::Ipv4Addr = lab.pod_ip(pod).parse().unwrap();
        assert!(cidr.contains(&ip), "{pod} at {ip} on {row}");
    }
    let mesh = lab.full_mesh();
    assert_eq!(
        mesh["results"].as_array().map(Vec::len),
        Some(9),
        "{mesh:#}"
    );

    // node-1 leaves: its subnet leaves the others' routes.
    let subnet_of_a = {
        let ip: std::net::Ipv4Addr = lab.pod_ip("a").parse().unwrap();
        let net = ipnet::Ipv4Net::new(ip, 24).unwrap().trunc();
        net.to_string()
    };
    lab.ok(&["node", "remove", "node-1"]);
    for node in ["node-2", "node-3"] {
        let gone = common::wait_until(std::time::Duration::from_secs(20), || {
            lab.node_ip_cmd(node, &["route", "show", &subnet_of_a])
                .trim()
                .is_empty()
        });
        assert!(
            gone.is_some(),
            "{node} kept its route to {subnet_of_a}: {}",
            lab.node_ip_cmd(node, &["route"])
        );
    }
}
