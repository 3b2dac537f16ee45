//! One real `weft agent` per node, running inside the node's namespace,
//! started detached so the lab outlives the command that created it.

use std::path::Path;
use std::time::Duration;

use weft_datapath::NetNs;

use crate::layout::Layout;
use crate::procs;

/// The port every agent serves /healthz and /readyz on (inside its node).
pub const HEALTH_PORT: u16 = 10254;

pub fn owner(layout: &Layout, node: &str) -> String {
    format!("{}/agent/{node}", layout.lab)
}

pub fn start(layout: &Layout, weft: &Path, node: &str, ns: &NetNs) -> std::io::Result<u32> {
    let dir = layout.node_dir(node);
    let args: Vec<String> = [
        "agent",
        "--node",
        node,
        "--store",
        &layout.store().display().to_string(),
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
        "--health",
        &format!("0.0.0.0:{HEALTH_PORT}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
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
