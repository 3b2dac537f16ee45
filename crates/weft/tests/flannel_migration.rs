//! Replacing flannel with weft on a running cluster, one node at a time,
//! as docs/migrate-from-flannel.md tells an operator to. Two nodes run the
//! real flanneld, with either subnet store (etcd in flannel's layout, or
//! the Nodes of a kube-apiserver), pods wired by flannel's CNI chain
//! (common/flannel.rs) and TCP streams between pods of different nodes.
//! Node by node, flanneld is stopped (SIGTERM, as a DaemonSet rollout
//! does) and `weft agent` started in its place. The streams never break,
//! each node keeps its subnet, weft-cni gives new pods addresses the old
//! ones do not hold (and releases an old pod's at its DEL), new and old
//! pods reach each other across nodes, and nothing of flanneld's is left:
//! every route to a node is weft's (flanneld's VXLAN device is weft's now),
//! no flannel nftables table, no flannel CNI configuration.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::flannel::{control_plane, Node, Store};
use common::kube_node::{add_pod_on, hostname_via, ip, netexec, Pod, Process};
use common::wait_until;
use rstest::rstest;
use weft_cni::invoke::Call;
use weft_datapath::scratch::Namespaces;

/// kube-flannel's CNI configuration (its ConfigMap's cni-conf.json).
const KUBE_FLANNEL_CONFLIST: &str = r#"{"name": "cbr0", "cniVersion": "0.3.1", "plugins": [
  {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

/// What a stream saw.
#[derive(Debug)]
struct Flow {
    round_trips: u64,
    longest_wait: Duration,
    failure: Option<String>,
}

/// A TCP connection from one pod to another: the client sends a counter
/// every 20 ms and waits (up to 60 s) for the server's echo of it; it
/// stops at the first failure, or when told to.
struct Stream {
    name: String,
    stop: Arc<AtomicBool>,
    client: JoinHandle<Flow>,
}

impl Stream {
    fn open(name: &str, from: &Pod, to: &Pod, port: u16) -> Stream {
        let listener = to
            .ns
            .run_in(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .unwrap()
            .expect("listening in the server pod");
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accepting the stream");
            let mut word = [0u8; 8];
            while conn.read_exact(&mut word).is_ok() && conn.write_all(&word).is_ok() {}
        });
        let to = SocketAddr::from((to.ip, port));
        let mut conn = from
            .ns
            .run_in(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .unwrap()
            .unwrap_or_else(|e| panic!("stream {name} connecting to {to}: {e}"));
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let client = std::thread::spawn(move || {
            let mut flow = Flow {
                round_trips: 0,
                longest_wait: Duration::ZERO,
                failure: None,
            };
            while !stopped.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let mut echo = [0u8; 8];
                let result = conn
                    .write_all(&flow.round_trips.to_be_bytes())
                    .and_then(|()| conn.read_exact(&mut echo));
                if let Err(e) = result {
                    flow.failure = Some(e.to_string());
                    break;
                }
                if u64::from_be_bytes(echo) != flow.round_trips {
                    flow.failure = Some(format!("echo {echo:?} for {}", flow.round_trips));
                    break;
                }
                flow.longest_wait = flow.longest_wait.max(sent.elapsed());
                flow.round_trips += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            flow
        });
        Stream {
            name: name.into(),
            stop,
            client,
        }
    }

    fn is_broken(&self) -> bool {
        self.client.is_finished()
    }

    fn close(self) -> (String, Flow) {
        self.stop.store(true, Ordering::Relaxed);
        (self.name, self.client.join().unwrap())
    }
}

/// Stops flanneld as a DaemonSet rollout does: SIGTERM, then waits.
fn stop_gracefully(mut flanneld: Process) {
    let pid = flanneld.0.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    flanneld.0.wait().unwrap();
}

/// The routes of `node` to other nodes' pod subnets that are not weft's
/// (weft tags its own with route protocol 152).
fn foreign_routes(node: &Node) -> Vec<String> {
    ip(&node.name, &["route", "show", "root", "10.244.0.0/16"])
        .lines()
        .filter(|route| !route.contains("dev cni0") && !route.contains("proto 152"))
        .map(str::to_owned)
        .collect()
}

/// `from` reaches `to` (serving /hostname as `name`) within 20 s.
fn assert_reaches(from: &Pod, to: &Pod, name: &str, nodes: &[&Node]) {
    let reached = wait_until(Duration::from_secs(20), || {
        hostname_via(&from.ns, &format!("{}:8080", to.ip)).as_deref() == Some(name)
    });
    let state: String = nodes
        .iter()
        .map(|n| {
            format!(
                "--- {}\nroutes: {}\nflanneld: {}\nagent: {}\n",
                n.name,
                ip(&n.name, &["route"]),
                n.log("flanneld.log"),
                n.log("agent.log")
            )
        })
        .collect();
    assert!(
        reached.is_some(),
        "{} did not reach {} ({name}):\n{state}",
        from.ip,
        to.ip
    );
}

#[rstest]
#[case::etcd_vxlan(Store::Etcd, "vxlan")]
#[case::etcd_host_gw(Store::Etcd, "host-gw")]
#[case::kube_vxlan(Store::Kube, "vxlan")]
fn flannel_is_replaced_node_by_node_without_breaking_streams(
    #[case] store: Store,
    #[case] backend: &str,
) {
    let cp = control_plane();
    store.prepare(&cp, backend);
    let mut scratch = Namespaces::new("fl-mig");
    let mut pods_ns = Namespaces::new("fl-mpod");
    let nodes = [
        Node::plugged(&cp, &mut scratch, "node-a", "198.18.0.11", backend),
        Node::plugged(&cp, &mut scratch, "node-b", "198.18.0.12", backend),
    ];
    let names = ["node-a", "node-b"];
    let mut flannelds: Vec<Option<Process>> = nodes
        .iter()
        .zip(names)
        .map(|(node, name)| Some(store.start_flanneld(&cp, node, name)))
        .collect();
    let up = wait_until(Duration::from_secs(30), || {
        nodes
            .iter()
            .all(|n| n.dir.path().join("subnet.env").exists())
    });
    assert!(up.is_some(), "flanneld did not come up");
    let subnets = nodes.each_ref().map(Node::subnet);

    // Pods of flannel's CNI chain, two per node, each serving /hostname.
    let old: Vec<[Pod; 2]> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| [0, 1].map(|j| node.flannel_pod(&mut pods_ns, &format!("old{i}{j}"))))
        .collect();
    let _servers: Vec<Process> = old
        .iter()
        .enumerate()
        .flat_map(|(i, pods)| {
            pods.iter()
                .enumerate()
                .map(move |(j, pod)| netexec(pod, &format!("old{i}{j}")))
        })
        .collect();
    assert_reaches(&old[0][0], &old[1][0], "old10", &nodes.each_ref());
    // Streams both ways between the nodes.
    let streams = [
        Stream::open("a→b", &old[0][0], &old[1][0], 7000),
        Stream::open("b→a", &old[1][1], &old[0][1], 7001),
    ];

    let mut agents = Vec::new();
    let mut new_pods = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        // What kube-flannel's install-cni leaves on a node.
        let net_d = node.dir.path().join("net.d");
        std::fs::create_dir_all(&net_d).unwrap();
        std::fs::write(net_d.join("10-flannel.conflist"), KUBE_FLANNEL_CONFLIST).unwrap();
        stop_gracefully(flannelds[i].take().unwrap());
        agents.push(store.start_weft(&cp, node, names[i]));
        let conflist = node.dir.path().join("net.d/10-weft.conflist");
        let taken_over = wait_until(Duration::from_secs(30), || {
            conflist.exists() && foreign_routes(node).is_empty()
        });
        assert!(
            taken_over.is_some(),
            "weft did not take {} over:\n{}",
            node.name,
            node.log("agent.log")
        );
        assert_eq!(node.subnet(), subnets[i], "{} changed subnet", node.name);
        assert!(
            !net_d.join("10-flannel.conflist").exists(),
            "flannel's CNI configuration would still come first"
        );
        // A new pod, wired by weft-cni, gets an address no old pod holds.
        let pod = add_pod_on(&node.ns, node.dir.path(), &mut pods_ns, &format!("new{i}"));
        let held: Vec<Ipv4Addr> = old[i].iter().map(|p| p.ip).collect();
        assert!(
            !held.contains(&pod.ip),
            "weft-cni gave {} to a new pod, which host-local had given an old one",
            pod.ip
        );
        new_pods.push((netexec(&pod, &format!("new{i}")), pod));
        for stream in &streams {
            assert!(!stream.is_broken(), "stream {} broke", stream.name);
        }
    }

    // New and old pods reach each other across the nodes.
    let all = nodes.each_ref();
    let (new_a, new_b) = (&new_pods[0].1, &new_pods[1].1);
    assert_reaches(new_a, new_b, "new1", &all);
    assert_reaches(new_b, new_a, "new0", &all);
    assert_reaches(new_a, &old[1][1], "old11", &all);
    assert_reaches(&old[1][0], new_a, "new0", &all);
    assert_reaches(new_b, &old[0][0], "old00", &all);

    // Nothing of flanneld's is left.
    for node in &nodes {
        let foreign = foreign_routes(node);
        assert!(foreign.is_empty(), "{}: {foreign:?}", node.name);
        if backend == "vxlan" {
            // flanneld's device is weft's now, and says so.
            let device = ip(&node.name, &["link", "show", "flannel.1"]);
            assert!(
                device.contains("alias weft: taken over from flanneld"),
                "{}: {device}",
                node.name
            );
        }
        let tables = std::process::Command::new("ip")
            .args(["netns", "exec", &node.name, "nft", "list", "tables"])
            .output()
            .unwrap();
        let tables = String::from_utf8_lossy(&tables.stdout);
        assert!(!tables.contains("flannel"), "{}: {tables}", node.name);
    }

    // The streams lived through it all.
    std::thread::sleep(Duration::from_secs(1));
    for (name, flow) in streams.map(Stream::close) {
        println!(
            "stream {name}: {} round trips, longest wait {:?}",
            flow.round_trips, flow.longest_wait
        );
        assert!(flow.failure.is_none(), "stream {name} broke: {flow:?}");
    }

    // An old pod's DEL is weft-cni's now: it takes the pod's interface
    // (and so its veth pair) away, then releases host-local's record.
    let node_a = &nodes[0];
    let record = node_a.host_local_dir().join(old[0][0].ip.to_string());
    assert!(record.exists(), "host-local's record of {}", old[0][0].ip);
    let container = format!("{}-old00", pods_ns.prefix());
    let conflist =
        std::fs::read_to_string(node_a.dir.path().join("net.d/10-weft.conflist")).unwrap();
    let conf = weft_cni::conflist::Conflist::parse(&conflist)
        .unwrap()
        .plugin_config(0, &Default::default())
        .unwrap();
    let plugin = std::path::Path::new(common::WEFT).with_file_name("weft-cni");
    let netns = weft_datapath::netns::named_path(&container);
    let reply = Call {
        container_id: &container,
        netns: Some(&netns),
        host: Some(&node_a.ns),
        ..Call::new(&plugin, "DEL")
    }
    .run(&conf)
    .unwrap();
    assert!(reply.ok(), "DEL: {} {}", reply.stdout, reply.stderr);
    assert!(!record.exists(), "DEL left host-local's record");
    let links = ip(&container, &["-br", "link"]);
    assert!(!links.contains("eth0"), "DEL left the pod's eth0: {links}");
    drop(agents);
}
