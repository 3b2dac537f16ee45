//! Nodes as flannel runs them, for the interop and migration tests: the
//! real flanneld (v0.28.9, built by `scripts/setup.sh --peers`) in a node's
//! network namespace, and pods wired as flannel's CNI chain wires them —
//! the reference bridge plugin (v1.10.0, `cni0`, the gateway) with
//! host-local on the subnet in flanneld's subnet.env, its reservations in
//! `<node dir>/ipam/cbr0` (where the test agents' `--host-local-dir`
//! points). flannel's CNI plugin itself (github.com/flannel-io/cni-plugin)
//! is not served by the Go module proxy; what it does is this delegation.

use kube::api::PostParams;
use serde_json::json;
use weft_datapath::scratch::Namespaces;
use weft_datapath::NetNs;

use super::control_plane::{peer, ControlPlane};
use super::kube_node::{
    self, ip, plug, spawn_logged, start_agent_in, start_etcd_agent, wire_pod, with_api, Pod,
    Process,
};

/// etcd's client URL on the lab underlay.
pub const ETCD: &str = "http://198.18.0.1:2379";
/// flannel's etcd prefix.
pub const PREFIX: &str = "/coreos.com/network";

/// The network config, with `backend`, in net-conf.json's form.
pub fn config(backend: &str) -> String {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": backend}, "EnableNFTables": true})
        .to_string()
}

/// The control plane on an underlay bridge (`ul`, 198.18.0.1/24) that the
/// nodes plug into.
pub fn control_plane() -> ControlPlane {
    let cp = ControlPlane::start_reachable_at("198.18.0.1".parse().unwrap());
    let cp_ns = cp.ns_name().to_owned();
    ip(&cp_ns, &["link", "add", "ul", "type", "bridge"]);
    ip(&cp_ns, &["addr", "add", "198.18.0.1/24", "dev", "ul"]);
    ip(&cp_ns, &["link", "set", "ul", "up"]);
    cp
}

/// Which of flannel's subnet stores a test uses.
#[derive(Debug, Clone, Copy)]
pub enum Store {
    /// etcd in flannel's layout.
    Etcd,
    /// The Nodes of the kube-apiserver (flanneld's `--kube-subnet-mgr`).
    Kube,
}

/// The subnets node IPAM gives node-a and node-b in the Kubernetes store.
const POD_CIDRS: [(&str, &str); 2] = [("node-a", "10.244.1.0/24"), ("node-b", "10.244.2.0/24")];

impl Store {
    /// Makes the store ready for node-a and node-b with `backend`: etcd
    /// gets the network config; the API server the two Nodes with their
    /// podCIDRs (node IPAM's part, done here).
    pub fn prepare(self, cp: &ControlPlane, backend: &str) {
        match self {
            Store::Etcd => put_etcd_config(cp, backend),
            Store::Kube => with_api(cp, |nodes| async move {
                // One annotation a kubelet sets: flanneld panics on a Node
                // with none (it writes into its nil annotation map).
                let kubelet =
                    json!({"volumes.kubernetes.io/controller-managed-attach-detach": "true"});
                for (name, cidr) in POD_CIDRS {
                    let node = kube_node::node(name, cidr, kubelet.clone());
                    nodes.create(&PostParams::default(), &node).await.unwrap();
                }
            }),
        }
    }

    /// Starts flanneld on `node` as the Node `name`.
    pub fn start_flanneld(self, cp: &ControlPlane, node: &Node, name: &str) -> Process {
        let args = match self {
            Store::Etcd => vec![format!("--etcd-endpoints={ETCD}")],
            Store::Kube => vec![
                "--kube-subnet-mgr".into(),
                format!("--kubeconfig-file={}", kubeconfig(cp).display()),
                format!(
                    "--net-config-path={}",
                    node.dir.path().join("net-conf.json").display()
                ),
            ],
        };
        node.start_flanneld(name, &args)
    }

    /// Starts `weft agent` on `node` as the Node `name`.
    pub fn start_weft(self, cp: &ControlPlane, node: &Node, name: &str) -> Process {
        let dir = node.dir.path();
        match self {
            Store::Etcd => start_etcd_agent(&node.ns, name, "eth0", ETCD, dir, &[]),
            Store::Kube => {
                start_agent_in(&node.ns, name, &kubeconfig(cp), dir, &["--iface", "eth0"])
            }
        }
    }
}

/// An admin kubeconfig for the API server at 198.18.0.1.
fn kubeconfig(cp: &ControlPlane) -> std::path::PathBuf {
    cp.admin_kubeconfig_at("198.18.0.1".parse().unwrap())
}

/// Writes flannel's network config into etcd.
pub fn put_etcd_config(cp: &ControlPlane, backend: &str) {
    let conf = config(backend);
    cp.with_etcd(|endpoints| async move {
        let mut raw = etcd_client::Client::connect(&endpoints, None)
            .await
            .unwrap();
        raw.put(format!("{PREFIX}/config"), conf, None)
            .await
            .unwrap();
    });
}

/// One node: its network namespace (and name) and its files.
pub struct Node {
    pub name: String,
    pub ns: NetNs,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// A namespace on the underlay at `address` (eth0), forwarding on,
    /// with net-conf.json for `backend` in its directory.
    pub fn plugged(
        cp: &ControlPlane,
        scratch: &mut Namespaces,
        name: &str,
        address: &str,
        backend: &str,
    ) -> Node {
        let (ns_name, ns) = scratch.add(name);
        plug(cp, &ns_name, address);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("net-conf.json"), config(backend)).unwrap();
        // flanneld does not turn forwarding on; a node's setup does.
        ns.run_in(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .unwrap()
            .unwrap();
        Node {
            name: ns_name,
            ns,
            dir,
        }
    }

    pub fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    /// The subnet in its subnet.env.
    pub fn subnet(&self) -> ipnet::Ipv4Net {
        self.subnet_env("FLANNEL_SUBNET")
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .trunc()
    }

    /// A field of its subnet.env.
    pub fn subnet_env(&self, key: &str) -> String {
        let env = std::fs::read_to_string(self.dir.path().join("subnet.env"))
            .expect("the node's subnet.env");
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in subnet.env: {env}"))
            .to_string()
    }

    pub fn routes_to(&self, subnet: ipnet::Ipv4Net) -> String {
        ip(&self.name, &["route", "show", &subnet.to_string()])
    }

    /// Starts flanneld (`node_name` is its NODE_NAME), reading etcd at
    /// [`ETCD`]; `args` add to or replace that (`--kube-subnet-mgr`).
    pub fn start_flanneld(&self, node_name: &str, args: &[String]) -> Process {
        let mut flanneld = self.ns.command(peer("flannel"));
        flanneld
            .args(["--iface", "eth0"])
            .arg(format!(
                "--subnet-file={}",
                self.dir.path().join("subnet.env").display()
            ))
            .args(args)
            .env("NODE_NAME", node_name);
        spawn_logged(flanneld, &self.dir.path().join("flanneld.log"))
    }

    /// A pod wired as flannel's CNI chain wires one.
    pub fn flannel_pod(&self, scratch: &mut Namespaces, name: &str) -> Pod {
        let subnet = self.subnet();
        let conf = json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge",
            "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
            "mtu": self.subnet_env("FLANNEL_MTU").parse::<u32>().unwrap(),
            "ipam": {"type": "host-local", "dataDir": self.dir.path().join("ipam"),
                     "ranges": [[{"subnet": subnet.to_string()}]],
                     "routes": [{"dst": self.subnet_env("FLANNEL_NETWORK")}]}
        });
        let bridge = weft_lab::control_plane::reference_cni_plugin("bridge").unwrap();
        wire_pod(&self.ns, &bridge, &conf, scratch, name)
    }

    /// host-local's reservations of flannel's network on this node.
    pub fn host_local_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("ipam/cbr0")
    }
}
