//! One real `weft agent` per node, running inside the node's namespace,
//! started detached so the lab outlives the command that created it.

use std::path::Path;
use std::time::Duration;

use weft_datapath::NetNs;

use crate::layout::{ControlPlane, LabState, Layout, Proxy, SubnetStore};
use crate::{kube_control_plane, procs};

/// The port every agent serves /healthz and /readyz on (inside its node).
pub const HEALTH_PORT: u16 = 10254;

pub fn owner(layout: &Layout, node: &str) -> String {
    format!("{}/agent/{node}", layout.lab)
}

/// Starts the agent of `node`: on the lab's store, or (Kubernetes mode)
/// on the API server with the credentials of weft's ServiceAccount,
/// allocating LoadBalancer addresses from the lab's pool.
pub fn start(
    layout: &Layout,
    state: &LabState,
    weft: &Path,
    node: &str,
    ns: &NetNs,
) -> std::io::Result<u32> {
    let dir = layout.node_dir(node);
    let cluster: Vec<String> = match state.control_plane {
        ControlPlane::Embedded => vec!["--store".into(), layout.store().display().to_string()],
        ControlPlane::Kubernetes { .. } => vec![
            "--kubeconfig".into(),
            kube_control_plane::agent_kubeconfig(layout)
                .display()
                .to_string(),
            "--lb-cidr".into(),
            state.lb_pool().to_string(),
        ],
    };
    let leases: Vec<String> = match state.subnet_store {
        SubnetStore::Cluster => Vec::new(),
        SubnetStore::Etcd => vec![
            "--etcd-endpoints".into(),
            crate::flannel::etcd_endpoint(state),
            "--etcd-prefix".into(),
            crate::flannel::ETCD_PREFIX.into(),
        ],
    };
    let mut args: Vec<String> = [
        "agent",
        "--node",
        node,
        "--net-conf",
        &layout.net_conf().display().to_string(),
        "--iface",
        "eth0",
        "--subnet-file",
        &dir.join("subnet.env").display().to_string(),
        "--cni-conf-dir",
        &dir.join("net.d").display().to_string(),
        "--ipam-dir",
        &dir.join("ipam").display().to_string(),
        "--host-local-dir",
        &dir.join("ipam/cbr0").display().to_string(),
        "--policy-socket",
        &dir.join("policy.sock").display().to_string(),
        "--health",
        &format!("0.0.0.0:{HEALTH_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(cluster);
    args.extend(leases);
    if state.proxy == Proxy::KubeProxy {
        args.push("--no-proxy".into());
    }
    procs::spawn(
        Some(ns),
        weft,
        &args,
        &owner(layout, node),
        &dir.join("agent.log"),
    )
}

pub fn stop(layout: &Layout, node: &str, pid: u32) -> bool {
    procs::stop(pid, &owner(layout, node), Duration::from_secs(3))
}

pub fn is_running(layout: &Layout, node: &str, pid: Option<u32>) -> bool {
    pid.is_some_and(|p| procs::is_ours(p, &owner(layout, node)))
}

/// The subnet the network agent of the node whose files are in `node_dir`
/// holds: the one in its subnet.env, which weft's agent and flanneld
/// alike write.
pub fn held_subnet(node_dir: &Path) -> Option<ipnet::Ipv4Net> {
    let env = weft_ipam::SubnetEnv::read(&node_dir.join("subnet.env")).ok()?;
    match env.subnet? {
        ipnet::IpNet::V4(subnet) => Some(subnet.trunc()),
        ipnet::IpNet::V6(_) => None,
    }
}
