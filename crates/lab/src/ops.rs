//! `weft lab` operations. Each one loads the lab's state, does its work
//! through the underlay, agents and kubelet modules, and prints what a user
//! needs to see. Failures say what went wrong and what to run next.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::{json, Value};
use weft_datapath::{netns, NetNs, Netlink};
use weft_store::Store;

use crate::kubelet::{self, Kubelet};
use crate::layout::{self, LabState, Layout, NodeRecord};
use crate::manifest::{self, Resource};
use crate::probe::{self, Outcome, Protocol};
use crate::{agents, procs, underlay};

/// The binaries a lab runs: `weft` (agents, netexec) and `weft-cni`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub weft: PathBuf,
    pub plugin: PathBuf,
}

impl Binaries {
    /// `weft` is this executable; `weft-cni` sits next to it.
    pub fn beside_current_exe() -> Result<Self> {
        let weft = std::env::current_exe()?;
        let plugin = weft.with_file_name("weft-cni");
        if !plugin.is_file() {
            bail!(
                "weft-cni not found next to {}; build both with `cargo build --release`",
                weft.display()
            );
        }
        Ok(Self { weft, plugin })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub struct UpOptions {
    pub name: String,
    pub nodes: u32,
    pub backend: String,
    pub pod_cidr: String,
    pub underlay: String,
}

/// `weft lab up`: underlay, nodes, one agent each; waits until every node
/// holds a lease and has its CNI configuration.
pub fn up(opts: &UpOptions, bins: &Binaries) -> Result<()> {
    let started = Instant::now();
    let layout = Layout::new(&opts.name)?;
    if layout.load().is_ok() {
        bail!(
            "lab {} already exists; remove it with `weft lab down --name {}` first",
            opts.name,
            opts.name
        );
    }
    if !matches!(opts.backend.as_str(), "vxlan" | "host-gw") {
        bail!(
            "--backend {:?} is not supported: use vxlan or host-gw",
            opts.backend
        );
    }
    let underlay_net: Ipv4Net = opts
        .underlay
        .parse()
        .with_context(|| format!("--underlay-cidr {:?}", opts.underlay))?;
    let pod_cidr: IpNet = opts
        .pod_cidr
        .parse()
        .with_context(|| format!("--pod-cidr {:?}", opts.pod_cidr))?;
    let rt = runtime()?;
    rt.block_on(async {
        let host = Netlink::connect()?;
        underlay::check_host_routes(
            &host,
            "underlay range",
            "underlay-cidr",
            IpNet::V4(underlay_net),
        )
        .await?;
        underlay::check_host_routes(&host, "pod CIDR", "pod-cidr", pod_cidr).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    let net_conf =
        json!({"Network": opts.pod_cidr, "SubnetLen": 24, "Backend": {"Type": opts.backend}});
    weft_agent::config::NetConf::parse(&net_conf.to_string())?;
    std::fs::create_dir_all(&layout.root)?;
    std::fs::write(layout.net_conf(), serde_json::to_string_pretty(&net_conf)?)?;
    let mut state = LabState {
        name: opts.name.clone(),
        backend: opts.backend.clone(),
        pod_cidr: opts.pod_cidr.clone(),
        underlay: underlay_net,
        nodes: Vec::new(),
    };
    layout.save(&state)?;
    let result = (|| -> Result<()> {
        Store::open(&layout.store())?;
        rt.block_on(underlay::create(&layout.underlay_ns()))?;
        println!(
            "underlay {} on {} (no route to the host)",
            layout.underlay_ns(),
            underlay_net
        );
        for i in 1..=opts.nodes {
            add_node_to(&layout, &mut state, &format!("node-{i}"), bins, &rt)?;
        }
        wait_ready(&layout, &state, Duration::from_secs(30))
    })();
    if let Err(e) = result {
        let _ = down(&opts.name);
        return Err(e.context(format!("lab {} could not start and was removed", opts.name)));
    }
    println!(
        "lab {} up: {} nodes, backend {}, pods from {} ({:.2} s)",
        opts.name,
        opts.nodes,
        opts.backend,
        opts.pod_cidr,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn add_node_to(
    layout: &Layout,
    state: &mut LabState,
    name: &str,
    bins: &Binaries,
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    if state.node(name).is_some() {
        bail!("node {name} already exists in lab {}", state.name);
    }
    let (index, ip) = state.next_slot();
    let ns = netns::create_named(&layout.node_ns(name))?;
    let under = NetNs::open(netns::named_path(&layout.underlay_ns()))?;
    rt.block_on(underlay::attach(&under, &ns, index, ip, state.underlay))?;
    let pid = agents::start(layout, &bins.weft, name, &ns)?;
    state.nodes.push(NodeRecord {
        name: name.into(),
        ip,
        index,
        agent_pid: Some(pid),
    });
    layout.save(state)?;
    println!("node {name:<8} {ip:<14} agent pid {pid}");
    Ok(())
}

/// Waits until every node's agent holds a lease, wrote its conflist and
/// routes to every other node.
fn wait_ready(layout: &Layout, state: &LabState, limit: Duration) -> Result<()> {
    let store = Store::open(&layout.store())?;
    let rt = runtime()?;
    let deadline = Instant::now() + limit;
    loop {
        let (leases, _) = store.leases("weft")?;
        let missing: Vec<&str> = state
            .nodes
            .iter()
            .filter(|n| {
                !leases.iter().any(|l| l.node == n.name)
                    || !layout
                        .node_dir(&n.name)
                        .join("net.d/10-weft.conflist")
                        .is_file()
            })
            .map(|n| n.name.as_str())
            .collect();
        if missing.is_empty() && meshed(&rt, layout, state, leases.len())? {
            return Ok(());
        }
        for n in &state.nodes {
            if !agents::is_running(layout, &n.name, n.agent_pid) {
                let log = std::fs::read_to_string(layout.node_dir(&n.name).join("agent.log"))
                    .unwrap_or_default();
                bail!("the agent of {} exited:\n{}", n.name, tail(&log, 15));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "nodes {} did not become ready in {limit:?}; see their agent.log",
                missing.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether every node of `state` whose agent runs routes to all
/// `total - 1` other nodes (a stopped agent converges when it starts).
fn meshed(
    rt: &tokio::runtime::Runtime,
    layout: &Layout,
    state: &LabState,
    total: usize,
) -> Result<bool> {
    for node in state
        .nodes
        .iter()
        .filter(|n| agents::is_running(layout, &n.name, n.agent_pid))
    {
        let ns = NetNs::open(netns::named_path(&layout.node_ns(&node.name)))?;
        let routes = rt.block_on(async { Netlink::connect_in(&ns)?.routes(false).await })?;
        let ours = routes
            .iter()
            .filter(|r| r.protocol == Some(weft_datapath::netlink::WEFT_ROUTE_PROTOCOL))
            .count();
        if ours + 1 < total {
            return Ok(false);
        }
    }
    Ok(true)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `weft lab down`: stops every process of the lab, removes every
/// namespace and file. Works from whatever is left, even a half-built lab.
pub fn down(name: &str) -> Result<()> {
    let layout = Layout::new(name)?;
    let state = layout.load().ok();
    if let Ok(store) = Store::open(&layout.store()) {
        if let Ok((pods, _)) = store.list_typed::<Pod>() {
            for pod in &pods {
                stop_containers(&layout, pod);
            }
        }
    }
    for node in state.iter().flat_map(|s| s.nodes.iter()) {
        if let Some(pid) = node.agent_pid {
            agents::stop(&layout, &node.name, pid);
        }
    }
    let prefix = layout.ns_prefix();
    let mut removed = 0;
    for ns in netns::list_named()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
    {
        netns::delete_named(&ns)?;
        removed += 1;
    }
    if layout.root.exists() {
        std::fs::remove_dir_all(&layout.root)
            .with_context(|| format!("removing {}", layout.root.display()))?;
    }
    println!("lab {name} removed ({removed} namespaces)");
    Ok(())
}

/// `weft lab down --all`.
pub fn down_all() -> Result<()> {
    for lab in layout::labs() {
        down(&lab)?;
    }
    Ok(())
}

fn stop_containers(layout: &Layout, pod: &Pod) {
    let (namespace, name) = kubelet::key(pod);
    for cs in pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
    {
        let pid = cs
            .container_id
            .as_deref()
            .and_then(|id| id.strip_prefix("weft://"))
            .and_then(|p| p.parse().ok());
        if let Some(pid) = pid {
            procs::stop(
                pid,
                &format!("{}/pod/{namespace}/{name}/{}", layout.lab, cs.name),
                Duration::from_secs(2),
            );
        }
    }
}

struct Lab {
    layout: Layout,
    state: LabState,
    store: Store,
}

impl Lab {
    fn open(name: &str) -> Result<Self> {
        let layout = Layout::new(name)?;
        let state = layout.load()?;
        let store = Store::open(&layout.store())?;
        Ok(Self {
            layout,
            state,
            store,
        })
    }

    fn kubelet(&self, bins: &Binaries) -> Kubelet<'_> {
        Kubelet {
            layout: &self.layout,
            store: &self.store,
            weft: bins.weft.clone(),
            plugin: bins.plugin.clone(),
        }
    }

    fn pods(&self) -> Result<Vec<Pod>> {
        Ok(self.store.list_typed::<Pod>()?.0)
    }

    fn pod(&self, namespace: &str, name: &str) -> Result<Pod> {
        self.store
            .get_typed::<Pod>(namespace, name)?
            .with_context(|| {
                format!("pod {namespace}/{name} not found (see `weft lab get pods -A`)")
            })
    }
}

/// `weft lab apply -f`: creates what the manifest describes; objects that
/// already exist are left as they are.
pub fn apply(name: &str, text: &str, bins: &Binaries) -> Result<()> {
    let lab = Lab::open(name)?;
    let kubelet = lab.kubelet(bins);
    for resource in manifest::parse(text)? {
        let pods = match &resource {
            Resource::Namespace(ns) => {
                let ns_name = ns.metadata.name.clone().unwrap_or_default();
                if lab.store.get_typed::<Namespace>("", &ns_name)?.is_none() {
                    lab.store.put_typed(ns)?;
                    println!("{} created", resource.describe());
                } else {
                    println!("{} unchanged", resource.describe());
                }
                continue;
            }
            Resource::Pod(p) => vec![p.clone()],
            Resource::Deployment(d) => {
                println!("{} applied", resource.describe());
                manifest::expand_deployment(d)
            }
        };
        for pod in pods {
            let (namespace, pod_name) = kubelet::key(&pod);
            if lab.store.get_typed::<Pod>(&namespace, &pod_name)?.is_some() {
                println!("pod/{pod_name} unchanged");
                continue;
            }
            let started = Instant::now();
            let pod = kubelet.run(&lab.state, pod)?;
            let status = pod.status.as_ref();
            println!(
                "pod/{pod_name} created on {} with IP {} ({:.0} ms)",
                pod.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
                started.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}

/// `weft lab delete -f`: deletes the Pods (and Deployments' Pods) a
/// manifest describes.
pub fn delete_manifest(name: &str, text: &str, bins: &Binaries) -> Result<()> {
    let lab = Lab::open(name)?;
    for resource in manifest::parse(text)? {
        let pods = match &resource {
            Resource::Namespace(_) => continue,
            Resource::Pod(p) => vec![p.clone()],
            Resource::Deployment(d) => manifest::expand_deployment(d),
        };
        for pod in pods {
            let (namespace, pod_name) = kubelet::key(&pod);
            delete_pod_in(&lab, bins, &namespace, &pod_name)?;
        }
    }
    Ok(())
}

/// `weft lab delete pod NAME`.
pub fn delete_pod(name: &str, namespace: &str, pod: &str, bins: &Binaries) -> Result<()> {
    let lab = Lab::open(name)?;
    delete_pod_in(&lab, bins, namespace, pod)
}

fn delete_pod_in(lab: &Lab, bins: &Binaries, namespace: &str, pod: &str) -> Result<()> {
    match lab.store.get_typed::<Pod>(namespace, pod)? {
        Some(p) => {
            lab.kubelet(bins).delete(&lab.state, &p)?;
            println!("pod/{pod} deleted");
        }
        None => println!("pod/{pod} not found"),
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Json,
}

/// `weft lab get nodes`.
pub fn get_nodes(name: &str, output: Output) -> Result<()> {
    let lab = Lab::open(name)?;
    let (nodes, _) = lab.store.list_typed::<Node>()?;
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"apiVersion": "v1", "kind": "NodeList", "items": nodes})
            )?
        );
        return Ok(());
    }
    println!(
        "{:<10} {:<9} {:<15} {:<16} {:<8}",
        "NAME", "STATUS", "INTERNAL-IP", "POD-CIDR", "BACKEND"
    );
    for record in &lab.state.nodes {
        let node = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(record.name.as_str()));
        let cidr = node
            .and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
            .unwrap_or_else(|| "<none>".into());
        let ready = if agents::is_running(&lab.layout, &record.name, record.agent_pid) {
            "Ready"
        } else {
            "NotReady"
        };
        println!(
            "{:<10} {:<9} {:<15} {:<16} {:<8}",
            record.name, ready, record.ip, cidr, lab.state.backend
        );
    }
    Ok(())
}

/// `weft lab get pods`.
pub fn get_pods(name: &str, namespace: Option<&str>, output: Output) -> Result<()> {
    let lab = Lab::open(name)?;
    let pods: Vec<Pod> = lab
        .pods()?
        .into_iter()
        .filter(|p| namespace.is_none_or(|ns| kubelet::key(p).0 == ns))
        .collect();
    if output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"apiVersion": "v1", "kind": "PodList", "items": pods})
            )?
        );
        return Ok(());
    }
    print!(
        "{:<12} {:<20} {:<6} {:<8} ",
        "NAMESPACE", "NAME", "READY", "STATUS"
    );
    if output == Output::Wide {
        println!("{:<15} {:<8}", "IP", "NODE");
    } else {
        println!();
    }
    for pod in &pods {
        let (ns, pod_name) = kubelet::key(pod);
        let status = pod.status.clone().unwrap_or_default();
        let containers = status.container_statuses.clone().unwrap_or_default();
        let ready = containers.iter().filter(|c| c.ready).count();
        print!(
            "{ns:<12} {pod_name:<20} {:<6} {:<8} ",
            format!("{ready}/{}", containers.len()),
            status.phase.clone().unwrap_or_default()
        );
        if output == Output::Wide {
            println!(
                "{:<15} {:<8}",
                status.pod_ip.unwrap_or_default(),
                pod.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default()
            );
        } else {
            println!();
        }
    }
    Ok(())
}

/// Where `weft lab exec` runs its command.
pub enum ExecTarget {
    Pod { namespace: String, name: String },
    Node(String),
}

/// `weft lab exec`: runs `cmd` in the pod's (or node's) network namespace
/// with the caller's terminal; returns its exit code.
pub fn exec(name: &str, target: &ExecTarget, cmd: &[String]) -> Result<i32> {
    let lab = Lab::open(name)?;
    let path = match target {
        ExecTarget::Node(node) => {
            lab.state
                .node(node)
                .with_context(|| format!("node {node} is not part of lab {name}"))?;
            netns::named_path(&lab.layout.node_ns(node))
        }
        ExecTarget::Pod {
            namespace,
            name: pod,
        } => pod_netns(&lab.pod(namespace, pod)?)?,
    };
    let (program, args) = cmd.split_first().context("give a command after --")?;
    let status = NetNs::open(&path)?
        .command(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    Ok(status.code().unwrap_or(128))
}

fn pod_netns(pod: &Pod) -> Result<PathBuf> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("weft.dev/netns"))
        .map(PathBuf::from)
        .context("the pod has no network namespace recorded")
}

/// `weft lab logs`.
pub fn logs(name: &str, namespace: &str, pod: &str, container: Option<&str>) -> Result<String> {
    let lab = Lab::open(name)?;
    let p = lab.pod(namespace, pod)?;
    let first = p
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let container = container.map(String::from).unwrap_or(first);
    let path = lab
        .layout
        .pod_dir(namespace, pod)
        .join(format!("{container}.log"));
    std::fs::read_to_string(&path)
        .with_context(|| format!("no logs for container {container} of {namespace}/{pod}"))
}

/// One cell of a probe matrix.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub from: String,
    pub to: String,
    pub target: SocketAddr,
    pub outcome: Outcome,
}

pub struct ProbeOptions {
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub port: Option<u16>,
    pub protocol: Protocol,
    pub timeout: Duration,
}

/// `weft lab probe`: every selected pod tries every target; returns the
/// cells (the caller prints them).
pub fn probe_matrix(name: &str, opts: &ProbeOptions) -> Result<Vec<ProbeResult>> {
    let lab = Lab::open(name)?;
    let pods = lab.pods()?;
    let pick = |names: &[String]| -> Vec<Pod> {
        pods.iter()
            .filter(|p| {
                names.is_empty()
                    || names.iter().any(|n| {
                        *n == kubelet::key(p).1
                            || *n == format!("{}/{}", kubelet::key(p).0, kubelet::key(p).1)
                    })
            })
            .cloned()
            .collect()
    };
    let (sources, targets) = (pick(&opts.from), pick(&opts.to));
    if sources.is_empty() || targets.is_empty() {
        bail!("no pods to probe (apply some with `weft lab apply -f`)");
    }
    let target_addrs: Vec<(String, SocketAddr)> = targets
        .iter()
        .filter_map(|p| {
            let ip: IpAddr = p.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            let port = opts.port.or_else(|| default_port(p, opts.protocol))?;
            Some((kubelet::key(p).1, SocketAddr::new(ip, port)))
        })
        .collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let targets = &target_addrs;
                s.spawn(move || -> Result<Vec<ProbeResult>> {
                    let ns = NetNs::open(pod_netns(src)?)?;
                    let from = kubelet::key(src).1;
                    let cells = ns.run_in(|| {
                        targets
                            .iter()
                            .map(|(to, addr)| ProbeResult {
                                from: from.clone(),
                                to: to.clone(),
                                target: *addr,
                                outcome: probe::probe_blocking(*addr, opts.protocol, opts.timeout),
                            })
                            .collect::<Vec<_>>()
                    })?;
                    Ok(cells)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(results.into_iter().flatten().collect())
}

/// The port a pod serves by default: its first declared port of the
/// protocol, or agnhost netexec's.
fn default_port(pod: &Pod, protocol: Protocol) -> Option<u16> {
    let want = if protocol == Protocol::Tcp {
        "TCP"
    } else {
        "UDP"
    };
    let containers = &pod.spec.as_ref()?.containers;
    let declared = containers
        .iter()
        .flat_map(|c| c.ports.clone().unwrap_or_default())
        .find(|p| p.protocol.as_deref().unwrap_or("TCP") == want)
        .and_then(|p| u16::try_from(p.container_port).ok());
    declared.or_else(|| {
        containers.iter().find_map(|c| {
            let cfg = crate::netexec::parse_agnhost_args(&c.args.clone().unwrap_or_default())?;
            if protocol == Protocol::Tcp {
                cfg.http_ports.first().copied()
            } else {
                cfg.udp_ports.first().copied()
            }
        })
    })
}

/// Prints a probe matrix as a table; returns whether every cell is ok.
pub fn print_matrix(results: &[ProbeResult]) -> bool {
    let mut froms: Vec<&str> = Vec::new();
    let mut tos: Vec<&str> = Vec::new();
    for r in results {
        if !froms.contains(&r.from.as_str()) {
            froms.push(&r.from);
        }
        if !tos.contains(&r.to.as_str()) {
            tos.push(&r.to);
        }
    }
    let width = tos.iter().map(|t| t.len()).max().unwrap_or(4).max(8) + 2;
    let first = froms.iter().map(|f| f.len()).max().unwrap_or(4).max(9) + 2;
    print!("{:<first$}", "FROM\\TO");
    for t in &tos {
        print!("{t:<width$}");
    }
    println!();
    let cells: BTreeMap<(&str, &str), &Outcome> = results
        .iter()
        .map(|r| ((r.from.as_str(), r.to.as_str()), &r.outcome))
        .collect();
    let mut all_ok = true;
    for f in &froms {
        print!("{f:<first$}");
        for t in &tos {
            let cell = match cells.get(&(*f, *t)) {
                Some(Outcome::Ok { .. }) => "ok",
                Some(Outcome::Refused) => "refused",
                Some(Outcome::Timeout) => "timeout",
                Some(Outcome::Error(_)) => "error",
                None => "-",
            };
            all_ok &= cell == "ok";
            print!("{cell:<width$}");
        }
        println!();
    }
    all_ok
}

pub fn matrix_json(results: &[ProbeResult]) -> Value {
    let cells: Vec<Value> = results
        .iter()
        .map(|r| {
            let (outcome, answer, millis) = match &r.outcome {
                Outcome::Ok { answer, millis } => ("ok", answer.clone(), Some(*millis)),
                Outcome::Refused => ("refused", String::new(), None),
                Outcome::Timeout => ("timeout", String::new(), None),
                Outcome::Error(e) => ("error", e.clone(), None),
            };
            json!({"from": r.from, "to": r.to, "target": r.target.to_string(), "outcome": outcome, "answer": answer, "millis": millis})
        })
        .collect();
    json!({"results": cells, "allOk": results.iter().all(|r| matches!(r.outcome, Outcome::Ok { .. }))})
}

/// `weft lab node add|remove|stop|start`.
pub enum NodeAction {
    Add,
    Remove,
    Stop,
    Start,
}

pub fn node(name: &str, node: &str, action: NodeAction, bins: &Binaries) -> Result<()> {
    let mut lab = Lab::open(name)?;
    match action {
        NodeAction::Add => {
            let rt = runtime()?;
            add_node_to(&lab.layout, &mut lab.state, node, bins, &rt)?;
            wait_ready(&lab.layout, &lab.state, Duration::from_secs(30))?;
            println!("node {node} added");
        }
        NodeAction::Remove => {
            let record = lab
                .state
                .node(node)
                .cloned()
                .with_context(|| format!("node {node} is not part of lab {name}"))?;
            for pod in lab
                .pods()?
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
            {
                lab.kubelet(bins).delete(&lab.state, pod)?;
            }
            if let Some(pid) = record.agent_pid {
                agents::stop(&lab.layout, node, pid);
            }
            lab.store.release_lease("weft", node)?;
            lab.store.delete("Node", "", node)?;
            netns::delete_named(&lab.layout.node_ns(node))?;
            lab.state.nodes.retain(|n| n.name != node);
            lab.layout.save(&lab.state)?;
            let _ = std::fs::remove_dir_all(lab.layout.node_dir(node));
            println!("node {node} removed; its lease is released");
        }
        NodeAction::Stop => {
            let record = lab
                .state
                .nodes
                .iter_mut()
                .find(|n| n.name == node)
                .with_context(|| format!("no node {node}"))?;
            if let Some(pid) = record.agent_pid.take() {
                procs::crash(pid, &agents::owner(&lab.layout, node));
            }
            lab.layout.save(&lab.state)?;
            println!("agent of {node} killed; its datapath stays as it was");
        }
        NodeAction::Start => {
            let ns = NetNs::open(netns::named_path(&lab.layout.node_ns(node)))?;
            let current = lab
                .state
                .node(node)
                .with_context(|| format!("no node {node}"))?
                .agent_pid;
            if agents::is_running(&lab.layout, node, current) {
                bail!("the agent of {node} is already running");
            }
            let pid = agents::start(&lab.layout, &bins.weft, node, &ns)?;
            if let Some(record) = lab.state.nodes.iter_mut().find(|n| n.name == node) {
                record.agent_pid = Some(pid);
            }
            lab.layout.save(&lab.state)?;
            println!("agent of {node} started (pid {pid})");
        }
    }
    Ok(())
}

/// `weft lab status`: every lab, its nodes and pods.
pub fn status() -> Result<()> {
    let labs = layout::labs();
    if labs.is_empty() {
        println!("no labs; start one with `weft lab up`");
    }
    for name in labs {
        let Ok(lab) = Lab::open(&name) else {
            println!("lab {name}: damaged; remove it with `weft lab down --name {name}`");
            continue;
        };
        let pods = lab.pods().map(|p| p.len()).unwrap_or(0);
        let running = lab
            .state
            .nodes
            .iter()
            .filter(|n| agents::is_running(&lab.layout, &n.name, n.agent_pid))
            .count();
        println!(
            "lab {name}: backend {}, pods from {}, {}/{} agents running, {pods} pods",
            lab.state.backend,
            lab.state.pod_cidr,
            running,
            lab.state.nodes.len()
        );
    }
    Ok(())
}
