//! weft beside the real flanneld (v0.28.9, built by `scripts/setup.sh
//! --peers`), with either of flannel's subnet stores: one etcd in
//! flannel's layout, or the Nodes of a kube-apiserver (flanneld's
//! `--kube-subnet-mgr`). node-a runs `weft agent`, node-b runs flanneld,
//! each in a network namespace of its own on one underlay bridge, with
//! the control plane (etcd, kube-apiserver) on 198.18.0.1. Each programs
//! the other's lease, a pod on either node reaches a pod on the other
//! (over vxlan and over host-gw), and a node that leaves disappears from
//! the other's routes. node-b's pod is wired as flannel's CNI plugin wires
//! one: the reference bridge plugin (v1.10.0, built by setup.sh) with
//! host-local on the subnet in flanneld's subnet.env. (flannel's CNI plugin
//! itself, github.com/flannel-io/cni-plugin, is not served by the Go module
//! proxy.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::control_plane::{peer, ControlPlane};
use common::kube_node::{
    self as kube_node, add_pod_on, hostname_via, ip, netexec, plug, start_agent_in,
    start_etcd_agent, with_api, Pod, Process,
};
use common::wait_until;
use etcd_client::Client;
use kube::api::{DeleteParams, PostParams};
use rstest::rstest;
use serde_json::json;
use weft_cni::invoke::Call;
use weft_datapath::scratch::Namespaces;
use weft_datapath::NetNs;

const PREFIX: &str = "/coreos.com/network";

/// The network config both read from etcd, with `backend`.
fn config(backend: &str) -> String {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": backend}, "EnableNFTables": true})
        .to_string()
}

/// A pod of the flanneld node, wired as flannel's CNI plugin does: the
/// reference bridge plugin v1.10.0 (cni0, the gateway) with host-local on
/// the node's subnet from flanneld's subnet.env.
fn flannel_pod(host: &NetNs, dir: &Path, scratch: &mut Namespaces, name: &str) -> Pod {
    let env = std::fs::read_to_string(dir.join("subnet.env")).expect("flanneld's subnet.env");
    let field = |key: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in subnet.env: {env}"))
            .to_string()
    };
    let subnet: ipnet::Ipv4Net = field("FLANNEL_SUBNET").parse().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge",
        "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
        "mtu": field("FLANNEL_MTU").parse::<u32>().unwrap(),
        "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                 "ranges": [[{"subnet": subnet.trunc().to_string()}]],
                 "routes": [{"dst": field("FLANNEL_NETWORK")}]}
    });
    let (ns_name, ns) = scratch.add(name);
    let netns = weft_datapath::netns::named_path(&ns_name);
    let bridge = weft_lab::control_plane::reference_cni_plugin("bridge").unwrap();
    let reply = Call {
        container_id: &ns_name,
        netns: Some(&netns),
        host: Some(host),
        ..Call::new(&bridge, "ADD")
    }
    .run(&conf)
    .expect("running the bridge plugin");
    assert!(
        reply.ok(),
        "bridge ADD {name}: {} {}",
        reply.stdout,
        reply.stderr
    );
    let address = reply.json["ips"][0]["address"].as_str().unwrap();
    let ip = address.split('/').next().unwrap().parse().unwrap();
    Pod { ns, ip }
}

/// Which subnet store both use.
#[derive(Clone, Copy)]
enum Store {
    Etcd,
    Kube,
}

/// One node: its network namespace (and name) and its files.
struct Node {
    name: String,
    ns: NetNs,
    dir: tempfile::TempDir,
}

impl Node {
    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    /// The subnet in its subnet.env.
    fn subnet(&self) -> ipnet::Ipv4Net {
        let env = std::fs::read_to_string(self.dir.path().join("subnet.env")).unwrap();
        let line = env.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET="));
        line.unwrap().parse::<ipnet::Ipv4Net>().unwrap().trunc()
    }

    fn routes_to(&self, subnet: ipnet::Ipv4Net) -> String {
        ip(&self.name, &["route", "show", &subnet.to_string()])
    }
}

/// The control plane on the underlay bridge at 198.18.0.1, a weft node
/// (node-a, .11) and a flanneld node (node-b, .12), both up.
struct Mixed {
    cp: ControlPlane,
    store: Store,
    weft: Node,
    flannel: Node,
    _scratch: Namespaces,
    _daemons: [Process; 2],
}

impl Mixed {
    fn up(store: Store, backend: &str) -> Mixed {
        let cp = ControlPlane::start_reachable_at("198.18.0.1".parse().unwrap());
        let cp_ns = cp.ns_name().to_owned();
        ip(&cp_ns, &["link", "add", "ul", "type", "bridge"]);
        ip(&cp_ns, &["addr", "add", "198.18.0.1/24", "dev", "ul"]);
        ip(&cp_ns, &["link", "set", "ul", "up"]);
        let mut scratch = Namespaces::new("fl-mix");
        let mut node = |name: &str, address: &str| {
            let (ns_name, ns) = scratch.add(name);
            plug(&cp, &ns_name, address);
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("net-conf.json"), config(backend)).unwrap();
            Node {
                name: ns_name,
                ns,
                dir,
            }
        };
        let (weft, flannel) = (node("node-a", "198.18.0.11"), node("node-b", "198.18.0.12"));
        // flanneld does not turn forwarding on; a node's setup does.
        flannel
            .ns
            .run_in(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .unwrap()
            .unwrap();
        let subnet_file = format!(
            "--subnet-file={}",
            flannel.dir.path().join("subnet.env").display()
        );
        let mut flanneld = flannel.ns.command(peer("flannel"));
        flanneld.args(["--iface", "eth0", &subnet_file]);
        let weft_agent = match store {
            Store::Etcd => {
                let conf = config(backend);
                cp.with_etcd(|endpoints| async move {
                    let mut raw = Client::connect(&endpoints, None).await.unwrap();
                    raw.put(format!("{PREFIX}/config"), conf, None)
                        .await
                        .unwrap();
                });
                flanneld.args(["--etcd-endpoints", ETCD]);
                start_etcd_agent(&weft.ns, "node-a", "eth0", ETCD, weft.dir.path(), &[])
            }
            Store::Kube => {
                // Node IPAM's part, done here. The annotation is one a
                // kubelet sets: flanneld panics on a Node with none (it
                // writes into its nil annotation map).
                with_api(&cp, |nodes| async move {
                    let kubelet =
                        json!({"volumes.kubernetes.io/controller-managed-attach-detach": "true"});
                    for (name, cidr) in [("node-a", "10.244.1.0/24"), ("node-b", "10.244.2.0/24")] {
                        let node = kube_node::node(name, cidr, kubelet.clone());
                        nodes.create(&PostParams::default(), &node).await.unwrap();
                    }
                });
                let kubeconfig = cp.admin_kubeconfig_at("198.18.0.1".parse().unwrap());
                flanneld
                    .arg("--kube-subnet-mgr")
                    .arg(format!("--kubeconfig-file={}", kubeconfig.display()))
                    .arg(format!(
                        "--net-config-path={}",
                        flannel.dir.path().join("net-conf.json").display()
                    ))
                    .env("NODE_NAME", "node-b");
                let extra = ["--iface", "eth0"];
                start_agent_in(&weft.ns, "node-a", &kubeconfig, weft.dir.path(), &extra)
            }
        };
        let log = std::fs::File::create(flannel.dir.path().join("flanneld.log")).unwrap();
        let flanneld = Process(
            flanneld
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting flanneld"),
        );
        let mixed = Mixed {
            cp,
            store,
            weft,
            flannel,
            _scratch: scratch,
            _daemons: [weft_agent, flanneld],
        };
        let up = wait_until(Duration::from_secs(30), || {
            mixed
                .weft
                .dir
                .path()
                .join("net.d/10-weft.conflist")
                .exists()
                && mixed.flannel.dir.path().join("subnet.env").exists()
        });
        assert!(up.is_some(), "a node did not come up:\n{}", mixed.logs());
        mixed
    }

    fn logs(&self) -> String {
        format!(
            "--- weft\n{}\n--- flanneld\n{}",
            self.weft.log("agent.log"),
            self.flannel.log("flanneld.log")
        )
    }

    /// Removes `node` from the cluster: its lease from etcd, or its Node.
    fn remove(&self, node: &Node, name: &'static str) {
        match self.store {
            Store::Etcd => {
                let subnet = node.subnet();
                let key = format!(
                    "{PREFIX}/subnets/{}-{}",
                    subnet.network(),
                    subnet.prefix_len()
                );
                self.cp.with_etcd(|endpoints| async move {
                    let mut raw = Client::connect(&endpoints, None).await.unwrap();
                    assert_eq!(raw.delete(key, None).await.unwrap().deleted(), 1);
                });
            }
            Store::Kube => with_api(&self.cp, |nodes| async move {
                nodes.delete(name, &DeleteParams::default()).await.unwrap();
            }),
        }
    }
}

const ETCD: &str = "http://198.18.0.1:2379";

#[rstest]
#[case::etcd_vxlan(Store::Etcd, "vxlan")]
#[case::etcd_host_gw(Store::Etcd, "host-gw")]
#[case::kube_vxlan(Store::Kube, "vxlan")]
#[case::kube_host_gw(Store::Kube, "host-gw")]
fn weft_and_flanneld_mesh_and_see_each_other_leave(#[case] store: Store, #[case] backend: &str) {
    let mut scratch = Namespaces::new("fl-pod");
    let bed = Mixed::up(store, backend);
    let pod_a = add_pod_on(&bed.weft.ns, bed.weft.dir.path(), &mut scratch, "pa");
    let pod_b = flannel_pod(&bed.flannel.ns, bed.flannel.dir.path(), &mut scratch, "pb");
    let _server_a = netexec(&pod_a, "a");
    let _server_b = netexec(&pod_b, "b");
    for (from, to, name) in [(&pod_a, &pod_b, "b"), (&pod_b, &pod_a, "a")] {
        let reached = wait_until(Duration::from_secs(20), || {
            hostname_via(&from.ns, &format!("{}:8080", to.ip)).as_deref() == Some(name)
        });
        assert!(
            reached.is_some(),
            "{} did not reach {} ({name}):\nweft's routes: {}\nflanneld's routes: {}\n{}",
            from.ip,
            to.ip,
            ip(&bed.weft.name, &["route"]),
            ip(&bed.flannel.name, &["route"]),
            bed.logs()
        );
    }
    // A node leaving leaves the other's routes; weft's first, since
    // flanneld stops when its own lease is gone.
    for (leaving, name, other) in [
        (&bed.weft, "node-a", &bed.flannel),
        (&bed.flannel, "node-b", &bed.weft),
    ] {
        let subnet = leaving.subnet();
        bed.remove(leaving, name);
        let gone = wait_until(Duration::from_secs(20), || {
            other.routes_to(subnet).trim().is_empty()
        });
        assert!(
            gone.is_some(),
            "{} kept its route to {subnet}: {}\n{}",
            other.name,
            other.routes_to(subnet),
            bed.logs()
        );
    }
}
