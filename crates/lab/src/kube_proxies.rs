//! kube-proxy in place of weft's Service proxy on a lab node (`weft lab up
//! --control-plane kubernetes --proxy kube-proxy`), so the same scenarios
//! can be run against both and what clients observe compared: kube-proxy
//! v1.36.3 from the peers cache, nftables mode, in the node's namespace,
//! as `system:kube-proxy`, with `--conntrack-max-per-core=0` so it sets
//! nothing of the host's (conntrack's table size is the host's, not the
//! namespace's). The node's agent runs with `--no-proxy` beside it.
//!
//! It owns those processes' command lines; starting and stopping them is
//! [`crate::procs`]'s.

use weft_datapath::NetNs;

use crate::control_plane;
use crate::kube_control_plane;
use crate::layout::{LabState, Layout};
use crate::procs;

/// Where kube-proxy answers `/healthz` (its default port), inside its node.
pub const HEALTH_PORT: u16 = 10256;

pub fn owner(layout: &Layout, node: &str) -> String {
    format!("{}/kube-proxy/{node}", layout.lab)
}

/// Starts kube-proxy for `node` in its namespace, detached.
pub fn start(layout: &Layout, state: &LabState, node: &str, ns: &NetNs) -> anyhow::Result<u32> {
    let kubeconfig = kube_control_plane::kube_proxy_kubeconfig(layout, state)?;
    let args: Vec<String> = vec![
        "--proxy-mode=nftables".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--hostname-override={node}"),
        format!("--cluster-cidr={}", state.pod_cidr),
        "--conntrack-max-per-core=0".into(),
        "--metrics-bind-address=127.0.0.1:10249".into(),
        format!("--healthz-bind-address=0.0.0.0:{HEALTH_PORT}"),
    ];
    Ok(procs::spawn(
        Some(ns),
        &control_plane::peer("kube-proxy")?,
        &args,
        &owner(layout, node),
        &layout.node_dir(node).join("kube-proxy.log"),
    )?)
}

pub fn is_running(layout: &Layout, node: &str, pid: Option<u32>) -> bool {
    pid.is_some_and(|p| procs::is_ours(p, &owner(layout, node)))
}
