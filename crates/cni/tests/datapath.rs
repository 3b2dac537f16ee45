//! The wiring carries traffic: pods reach each other and their gateway,
//! hostPorts DNAT to the pod (also hairpin, pod to itself), and ipMasq
//! hides pod addresses behind the node's for traffic leaving the network.
//! Every address here lives in namespaces the test creates; the outside
//! world is a namespace on 198.18.0.0/15.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{ipv4_of, Node};
use serde_json::json;
use weft_datapath::{netns, NetNs};

fn listen_in(ns: &Path, addr: &str) -> TcpListener {
    NetNs::open(ns)
        .unwrap()
        .run_in(|| TcpListener::bind(addr))
        .unwrap()
        .unwrap()
}

/// Connects from inside `ns`, sends "ping", returns what the peer saw as our address.
fn connect_in(ns: &Path, addr: &str, listener: &TcpListener) -> Option<SocketAddr> {
    let target: SocketAddr = addr.parse().unwrap();
    let stream = NetNs::open(ns)
        .unwrap()
        .run_in(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))
        .unwrap();
    let mut stream = stream.ok()?;
    stream.write_all(b"ping").ok()?;
    listener.set_nonblocking(false).ok()?;
    let (mut conn, peer) = listener.accept().ok()?;
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).ok()?;
    (&buf == b"ping").then_some(peer)
}

#[test]
fn two_pods_ping_each_other_and_their_gateway() {
    let mut node = Node::new("ping");
    let (a, b) = (node.pod("a"), node.pod("b"));
    let conf = node.conf(json!({}));
    let ra = node.add("pa", &a, &conf);
    let rb = node.add("pb", &b, &conf);
    assert!(Node::ping(&a, &ipv4_of(&rb.json)), "a cannot reach b");
    assert!(Node::ping(&b, &ipv4_of(&ra.json)), "b cannot reach a");
    assert!(Node::ping(&a, "10.88.0.1"), "a cannot reach its gateway");
    assert!(Node::ping(&b, "10.88.0.1"), "b cannot reach its gateway");
}

#[test]
fn host_ports_reach_the_pod_from_the_node_and_from_pods_including_itself() {
    let mut node = Node::new("hostport");
    let (server, client) = (node.pod("srv"), node.pod("cli"));
    let conf = node.conf(json!({"runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]}}));
    let rs = node.add("srv", &server, &conf);
    let server_ip = ipv4_of(&rs.json);
    node.add("cli", &client, &node.conf(json!({})));
    let listener = listen_in(&server, "0.0.0.0:8080");
    let node_path = netns::named_path(&node.name);
    // From the node itself (output hook) to its own address.
    assert!(
        connect_in(&node_path, "10.88.0.1:18080", &listener).is_some(),
        "node -> hostPort failed"
    );
    // From another pod (prerouting, then hairpin SNAT back onto the bridge).
    let peer = connect_in(&client, "10.88.0.1:18080", &listener).expect("pod -> hostPort failed");
    assert_eq!(
        peer.ip().to_string(),
        "10.88.0.1",
        "hairpin traffic must be masqueraded"
    );
    // The server reaching itself through its own hostPort.
    assert!(
        connect_in(&server, "10.88.0.1:18080", &listener).is_some(),
        "pod -> own hostPort failed"
    );
    // Direct pod-to-pod traffic is not NATed.
    let direct = connect_in(&client, &format!("{server_ip}:8080"), &listener).unwrap();
    assert_ne!(direct.ip().to_string(), "10.88.0.1");
    // DEL removes the mapping: the port no longer answers.
    assert!(node.run("DEL", "srv", Some(&server), &conf).ok());
    assert!(
        connect_in(&node_path, "10.88.0.1:18080", &listener).is_none(),
        "hostPort still open after DEL"
    );
}

/// A namespace standing for "outside the cluster", linked to the node by a veth on 198.18.0.0/30.
struct Outside {
    name: String,
}

impl Outside {
    fn attach(node: &Node) -> Self {
        let name = format!("{}-out", node.name);
        netns::create_named(&name).unwrap();
        let run = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        run(&[
            "-n", &node.name, "link", "add", "wtup0", "type", "veth", "peer", "name", "wtup1",
            "netns", &name,
        ]);
        run(&[
            "-n",
            &node.name,
            "addr",
            "add",
            "198.18.0.1/30",
            "dev",
            "wtup0",
        ]);
        run(&["-n", &node.name, "link", "set", "wtup0", "up"]);
        run(&["-n", &name, "addr", "add", "198.18.0.2/30", "dev", "wtup1"]);
        run(&["-n", &name, "link", "set", "wtup1", "up"]);
        Outside { name }
    }
    fn path(&self) -> std::path::PathBuf {
        netns::named_path(&self.name)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.name);
    }
}

#[test]
fn ip_masq_hides_pods_behind_the_node_outside_the_pod_network() {
    let mut node = Node::new("masq");
    let outside = Outside::attach(&node);
    let (a, b) = (node.pod("a"), node.pod("b"));
    let conf = node.conf(json!({"ipMasq": true}));
    node.add("ma", &a, &conf);
    let rb = node.add("mb", &b, &conf);
    let listener = listen_in(&outside.path(), "198.18.0.2:9000");
    let peer = connect_in(&a, "198.18.0.2:9000", &listener).expect("pod cannot reach the outside");
    assert_eq!(
        peer.ip().to_string(),
        "198.18.0.1",
        "traffic leaving the pod network must carry the node's address"
    );
    // Inside the pod network nothing is NATed.
    let inner = listen_in(&b, "0.0.0.0:9001");
    let peer = connect_in(&a, &format!("{}:9001", ipv4_of(&rb.json)), &inner).unwrap();
    assert!(
        peer.ip().to_string().starts_with("10.88.0."),
        "pod-to-pod traffic was NATed: {peer}"
    );
}
