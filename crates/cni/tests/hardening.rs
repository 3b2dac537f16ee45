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

/// The IPv4 addresses on `ifname` inside the namespace at `netns`.
fn addresses_in(netns: &std::path::Path, ifname: &str) -> Vec<String> {
    let ns = netns.file_name().unwrap().to_str().unwrap();
    let v: Value = serde_json::from_str(&Node::ip(ns, &["-j", "-4", "addr", "show", ifname]))
        .unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().map(String::from))
        .collect()
}

#[test]
fn racing_add_and_del_of_one_container_never_leave_an_unreserved_live_address() {
    let mut node = Node::new("race");
    let conf = node.conf(json!({}));
    let pods: Vec<_> = (0..4).map(|i| node.pod(&format!("r{i}"))).collect();
    for round in 0..30u64 {
        std::thread::scope(|s| {
            for (i, pod) in pods.iter().enumerate() {
                let (node, conf) = (&node, &conf);
                let id = format!("race{i}");
                let delay = std::time::Duration::from_micros((round * 7 + i as u64 * 3) % 12 * 500);
                s.spawn({
                    let id = id.clone();
                    move || node.run("ADD", &id, Some(pod), conf)
                });
                s.spawn(move || {
                    std::thread::sleep(delay);
                    node.run("DEL", &id, Some(pod), conf)
                });
            }
        });
        let reserved = node.reserved("testnet");
        for pod in &pods {
            for addr in addresses_in(pod, "eth0") {
                assert!(
                    reserved.contains(&addr),
                    "round {round}: {} carries {addr}, which IPAM no longer reserves (reserved: {reserved:?})",
                    pod.display()
                );
            }
        }
        for (i, pod) in pods.iter().enumerate() {
            let d = node.run("DEL", &format!("race{i}"), Some(pod), &conf);
            assert!(d.ok(), "DEL: {}", d.stdout);
        }
    }
    assert!(node.reserved("testnet").is_empty());
    assert!(node.settled_veths().is_empty());
}

/// Addresses on the node's bridge.
fn bridge_addresses(node: &Node) -> String {
    node.node_ip(&["-br", "addr", "show", "wtbr0"])
}

#[test]
fn a_failed_add_leaves_no_address_on_the_bridge() {
    let mut node = Node::new("failadd");
    let pod = node.pod("p");
    // The pod already has an eth0: creating the veth fails.
    let ns = pod.file_name().unwrap().to_str().unwrap().to_string();
    assert!(std::process::Command::new("ip")
        .args(["-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
        .status()
        .unwrap()
        .success());
    let conf = node.conf(json!({}));
    let r = node.run("ADD", "fa", Some(&pod), &conf);
    assert!(!r.ok(), "ADD should have failed: {}", r.stdout);
    assert!(
        !bridge_addresses(&node).contains("10.88.0.1"),
        "failed ADD left the gateway on the bridge: {}",
        bridge_addresses(&node)
    );
    // A failure at the very end (hostPort rules without nft) leaves nothing either.
    let pod2 = node.pod("p2");
    let with_ports = node.conf(json!({"runtimeConfig": {"portMappings": [
        {"hostPort": 38082, "containerPort": 80, "protocol": "tcp"}]}}));
    let r = common::run_without_nft(node.call("ADD", "fb", Some(&pod2)), &with_ports);
    assert!(!r.ok(), "ADD without nft should have failed: {}", r.stdout);
    assert!(
        !bridge_addresses(&node).contains("10.88.0.1"),
        "failed ADD left the gateway on the bridge: {}",
        bridge_addresses(&node)
    );
    assert!(node.reserved("testnet").is_empty());
    assert!(node.settled_veths().is_empty());
    assert!(addresses_in(&pod2, "eth0").is_empty());
    // And the next ADD works.
    node.add("fc", &pod2, &conf);
    assert!(Node::ping(&pod2, "10.88.0.1"));
}

#[test]
fn reserved_networks_are_refused_before_anything_is_touched() {
    let mut node = Node::new("resv");
    let pod = node.pod("p");
    for subnet in [
        "0.0.0.0/0",
        "0.0.0.0/8",
        "127.0.0.0/8",
        "127.1.0.0/16",
        "224.0.0.0/4",
        "239.1.0.0/24",
        "240.0.0.0/4",
        "169.254.0.0/16",
        "::/0",
        "::/120",
        "ff00::/8",
        "ff02::/120",
        "fe80::/64",
    ] {
        let conf = node.conf(json!({"ipam": {"ranges": [[{"subnet": subnet}]]}}));
        let r = node.run("ADD", "rs", Some(&pod), &conf);
        assert_eq!(r.code(), Some(7), "{subnet}: {}", r.stdout);
        let msg = r.json["msg"].as_str().unwrap();
        assert!(
            msg.contains("ipam.ranges[0][0]") && msg.contains(subnet),
            "{subnet}: {msg}"
        );
        assert!(
            !node.links().iter().any(|l| l == "wtbr0"),
            "{subnet}: the bridge was created before the range was refused"
        );
        assert!(addresses_in(&pod, "eth0").is_empty(), "{subnet}");
        assert!(
            !node.data_dir.exists(),
            "{subnet}: the IPAM directory was created before the range was refused"
        );
    }
    // The old single-range form is checked the same way.
    let conf = node.conf(json!({"ipam": {"ranges": [], "subnet": "0.0.0.0/0"}}));
    let r = node.run("ADD", "rs", Some(&pod), &conf);
    assert_eq!(r.code(), Some(7), "{}", r.stdout);
    assert!(r.stdout.contains("ipam (subnet"), "{}", r.stdout);
    assert!(node.reserved("testnet").is_empty());
}

#[test]
fn container_lock_files_go_with_their_containers() {
    let mut node = Node::new("lockfiles");
    let (a, b, c) = (node.pod("a"), node.pod("b"), node.pod("c"));
    let conf = node.conf(json!({}));
    let locks = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(node.data_dir.join("testnet/containers"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    node.add("la", &a, &conf);
    node.add("lb", &b, &conf);
    assert_eq!(locks(), ["la", "lb"]);
    assert!(node.run("DEL", "la", Some(&a), &conf).ok());
    assert_eq!(locks(), ["lb"]);
    let bad = node.conf(json!({"runtimeConfig": {"mac": "01:00:00:00:00:01"}}));
    assert!(!node.run("ADD", "lc", Some(&c), &bad).ok());
    assert_eq!(locks(), ["lb"], "a failed ADD left its lock file");
    let mut gc = node.conf(json!({}));
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(node.run("GC", "", None, &gc).ok());
    assert!(locks().is_empty(), "GC left lock files: {:?}", locks());
}

/// Runs weft-cni with `vars` and a stdout pipe whose reading end is already
/// closed; returns its exit code and stderr.
fn run_into_closed_pipe(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let out = std::process::Command::new(common::PLUGIN)
        .env_clear()
        .envs(vars.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(write_end)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_quietly() {
    for (vars, want) in [
        (&[("CNI_COMMAND", "VERSION")][..], 0),
        (&[("CNI_COMMAND", "FROB")][..], 1),
    ] {
        let (code, stderr) = run_into_closed_pipe(vars);
        assert_eq!(code, Some(want), "{vars:?}: {stderr}");
        assert!(stderr.is_empty(), "{vars:?}: {stderr}");
    }
}
