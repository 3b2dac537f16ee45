//! weft-cni under the inputs real runtimes and hostile configurations give
//! it: Go-cased keys, runtime configuration DEL cannot use, ADD and DEL of
//! one container racing, reserved networks, a closed stdout.

mod common;

use common::Node;
use serde_json::{json, Value};

/// How containerd 1.6 encodes a CRI port mapping (Go field names).
fn containerd_port_mapping(host_port: u16, container_port: u16) -> Value {
    json!({"HostPort": host_port, "ContainerPort": container_port, "Protocol": "tcp", "HostIP": ""})
}

fn hostport_chains(node: &Node) -> usize {
    node.nft_ruleset().matches("chain hp-").count()
}

#[test]
fn go_cased_keys_from_containerd_are_read_like_go_does() {
    let mut node = Node::new("gokeys");
    let pod = node.pod("p");
    let mut conf = node.conf(json!({
        "runtimeConfig": {"portMappings": [containerd_port_mapping(38080, 8080)]},
    }));
    conf.as_object_mut().unwrap().remove("ipam");
    conf["IPAM"] = json!({"DataDir": node.data_dir, "Ranges": [[{"Subnet": "10.88.0.0/24", "RangeStart": "10.88.0.50"}]]});
    let r = node.add("gk", &pod, &conf);
    assert_eq!(
        r.json["ips"][0]["address"], "10.88.0.50/24",
        "IPAM.Ranges[].RangeStart was not read: {}",
        r.stdout
    );
    let rules = node.nft_ruleset();
    assert!(
        rules.contains("38080") && rules.contains("10.88.0.50:8080"),
        "hostPort 38080 -> 8080 not programmed:\n{rules}"
    );
    let d = node.run("DEL", "gk", Some(&pod), &conf);
    assert!(d.ok(), "DEL: {} {}", d.stdout, d.stderr);
    assert_eq!(hostport_chains(&node), 0, "{}", node.nft_ruleset());
    assert!(node.reserved("testnet").is_empty());
}

#[test]
fn del_releases_everything_despite_runtime_configuration_it_cannot_use() {
    let mut node = Node::new("deljunk");
    let pod = node.pod("p");
    let good = node.conf(json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 38081, "containerPort": 8080, "protocol": "tcp"}]}}));
    node.add("dj", &pod, &good);
    assert_eq!(hostport_chains(&node), 1);
    let junk = node.conf(json!({"runtimeConfig": {
        "portMappings": [{"hostPort": "many", "containerPort": -1}],
        "mac": 7,
        "ips": "not a list",
    }}));
    let mut del = node.call("DEL", "dj", Some(&pod));
    del.args = "IP=banana;K8S_POD_NAME=x";
    let d = del.run(&junk).unwrap();
    assert!(d.ok(), "DEL failed: {} {}", d.stdout, d.stderr);
    assert!(
        d.stderr.contains("runtimeConfig") && d.stderr.contains("CNI_ARGS"),
        "DEL should say what it ignored: {}",
        d.stderr
    );
    assert_eq!(hostport_chains(&node), 0, "{}", node.nft_ruleset());
    assert!(node.reserved("testnet").is_empty(), "address left reserved");
    assert!(node.settled_veths().is_empty(), "veth left behind");
    // ADD still refuses what it cannot use, naming the field.
    let a = node.run("ADD", "dj2", Some(&pod), &junk);
    assert_eq!(a.code(), Some(7), "{}", a.stdout);
    assert!(
        a.json["msg"]
            .as_str()
            .unwrap()
            .contains("runtimeConfig.ips"),
        "{}",
        a.stdout
    );
    assert!(node.reserved("testnet").is_empty());
}
