//! weft beside the real flanneld (v0.28.9, built by `scripts/setup.sh
//! --peers`), with either of flannel's subnet stores: one etcd in
//! flannel's layout, or the Nodes of a kube-apiserver (flanneld's
//! `--kube-subnet-mgr`). node-a runs `weft agent`, node-b runs flanneld,
//! each in a network namespace of its own on one underlay bridge, with
//! the control plane (etcd, kube-apiserver) on 198.18.0.1. Each programs
//! the other's lease, a pod on either node reaches a pod on the other
//! (over vxlan and over host-gw), and a node that leaves disappears from
//! the other's routes. node-b's pod is wired as flannel's CNI chain wires
//! one (see common/flannel.rs).

mod common;

use std::time::Duration;

use common::control_plane::ControlPlane;
use common::flannel::{control_plane, Node, Store, PREFIX};
use common::kube_node::{add_pod_on, hostname_via, ip, netexec, with_api, Process};
use common::wait_until;
use etcd_client::Client;
use kube::api::DeleteParams;
use rstest::rstest;
use weft_datapath::scratch::Namespaces;

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
        let cp = control_plane();
        let mut scratch = Namespaces::new("fl-mix");
        let weft = Node::plugged(&cp, &mut scratch, "node-a", "198.18.0.11", backend);
        let flannel = Node::plugged(&cp, &mut scratch, "node-b", "198.18.0.12", backend);
        store.prepare(&cp, backend);
        let flanneld = store.start_flanneld(&cp, &flannel, "node-b");
        let weft_agent = store.start_weft(&cp, &weft, "node-a");
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

#[rstest]
#[case::etcd_vxlan(Store::Etcd, "vxlan")]
#[case::etcd_host_gw(Store::Etcd, "host-gw")]
#[case::kube_vxlan(Store::Kube, "vxlan")]
#[case::kube_host_gw(Store::Kube, "host-gw")]
fn weft_and_flanneld_mesh_and_see_each_other_leave(#[case] store: Store, #[case] backend: &str) {
    let mut scratch = Namespaces::new("fl-pod");
    let bed = Mixed::up(store, backend);
    let pod_a = add_pod_on(&bed.weft.ns, bed.weft.dir.path(), &mut scratch, "pa");
    let pod_b = bed.flannel.flannel_pod(&mut scratch, "pb");
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
