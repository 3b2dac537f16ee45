//! NetworkPolicy enforcement at scale: 1,000 policies over 1,000 pods
//! (100 namespaces × 10 pods, 10 nodes, so 100 pods on the node measured),
//! with realistic selectors, against the same cluster without policies.
//! It measures what the agent does on every change — build table
//! `ip weft-policy` from the model (`weft_policy::rules`) and write it
//! (`weft_agent::policy::writer`: whole with `nft -f` when its structure
//! changed, else only set elements over netlink) — in a scratch network
//! namespace:
//! - from an empty table (the agent's start);
//! - after one policy changed, one pod's labels changed, and one new pod
//!   (what weft-cni's ADD waits for);
//!
//! each the median of `--runs`, next to the same step without policies,
//! and with 20 ClusterNetworkPolicies (an Admin and a Baseline one per
//! team of namespaces) on top of the 1,000.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use weft_agent::policy::writer::{self, Written};
use weft_datapath::nft::{self, Family};
use weft_datapath::nft_script::Script;
use weft_datapath::scratch::Namespaces;
use weft_datapath::NetNs;
use weft_policy::api::ClusterNetworkPolicy;
use weft_policy::model::{
    ClusterPolicy, NamedPort, NamespaceLabels, Pod, Policies, Policy, Protocol,
};
use weft_policy::rules;

use crate::lab;

#[derive(clap::Args)]
pub struct Args {
    /// Repetitions of each step (the median is reported).
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Also measure connect latency, throughput and agent memory in a
    /// two-node lab with and without the 1,000 policies.
    #[arg(long)]
    lab: bool,
    /// The weft binary for --lab.
    #[arg(long, default_value = "target/release/weft")]
    weft: PathBuf,
    /// Seconds per iperf3 run (--lab).
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// TCP connects per latency sample (--lab).
    #[arg(long, default_value_t = 500)]
    connects: usize,
}

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 10;
const NODES: usize = 10;
const NODE: &str = "node-0";

/// The cluster the rules are made from.
struct Cluster {
    policies: Policies,
    pods: Vec<Pod>,
    namespaces: NamespaceLabels,
}

impl Cluster {
    fn new(with_policies: bool, with_cluster_policies: bool) -> Cluster {
        let namespaces: NamespaceLabels = (0..NAMESPACES)
            .map(|n| {
                let name = format!("ns-{n}");
                let labels = BTreeMap::from([
                    ("team".to_string(), format!("t{}", n % 10)),
                    ("kubernetes.io/metadata.name".to_string(), name.clone()),
                ]);
                (name, labels)
            })
            .collect();
        let pods = (0..NAMESPACES * PODS_PER_NAMESPACE).map(pod).collect();
        let network = match with_policies {
            true => (0..NAMESPACES).flat_map(namespace_policies).collect(),
            false => Vec::new(),
        };
        let cluster = match with_cluster_policies {
            true => (0..TEAMS).flat_map(team_policies).collect(),
            false => Vec::new(),
        };
        let policies = Policies::new(network, cluster);
        Cluster {
            policies,
            pods,
            namespaces,
        }
    }

    fn table(&self) -> rules::Table {
        rules::table(&self.policies, &self.pods, &self.namespaces, NODE)
    }
}

const TIERS: [&str; 3] = ["frontend", "backend", "db"];

/// Pod `i`: namespace `i / 10`, with an app and a tier, on a node that
/// spreads each namespace's pods and kinds over the nodes.
fn pod(i: usize) -> Pod {
    let n = i / PODS_PER_NAMESPACE;
    let j = i % PODS_PER_NAMESPACE;
    Pod {
        namespace: format!("ns-{n}"),
        name: format!("pod-{j}"),
        labels: BTreeMap::from([
            ("app".to_string(), format!("app-{}", j % 5)),
            ("tier".to_string(), TIERS[j % 3].to_string()),
        ]),
        ip: Some(
            format!("10.244.{}.{}", i % NODES, 2 + i / NODES)
                .parse()
                .unwrap(),
        ),
        ports: vec![NamedPort {
            name: "metrics".into(),
            port: 9090,
            protocol: Protocol::Tcp,
        }],
        host_network: false,
        node: Some(format!("node-{}", (i + n) % NODES)),
    }
}

/// Ten policies of the kinds clusters have: a default deny, tiers
/// allowing tiers, other teams' namespaces, monitoring on a named port,
/// egress with an ipBlock, ranges and UDP.
fn namespace_policies(n: usize) -> Vec<Policy> {
    let ns = format!("ns-{n}");
    namespace_specs(n)
        .into_iter()
        .enumerate()
        .map(|(k, spec)| {
            let api: NetworkPolicy = serde_json::from_value(json!({
                "metadata": {"name": format!("p{k}"), "namespace": ns},
                "spec": spec,
            }))
            .expect("a valid policy");
            Policy::read(&api)
        })
        .collect()
}

/// The specs of namespace `n`'s ten policies.
fn namespace_specs(n: usize) -> Vec<serde_json::Value> {
    let app = |a: usize| json!({"matchLabels": {"app": format!("app-{a}")}});
    let tier = |t: &str| json!({"matchLabels": {"tier": t}});
    let specs = [
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        json!({"podSelector": app(0), "ingress": [{"from": [{"podSelector": tier("frontend")}], "ports": [{"port": 8080}]}]}),
        json!({"podSelector": tier("db"), "ingress": [{"from": [{"podSelector": tier("backend")}], "ports": [{"port": 5432}]}]}),
        json!({"podSelector": app(1), "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", (n + 1) % 10)}}}], "ports": [{"port": 80}]}]}),
        json!({"podSelector": tier("frontend"), "policyTypes": ["Egress"], "egress": [
            {"to": [{"podSelector": tier("backend")}], "ports": [{"port": 8080}]},
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}], "ports": [{"port": 443}]}]}),
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}}, "podSelector": app(4)}], "ports": [{"port": "metrics"}]}]}),
        json!({"podSelector": app(2), "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", n % 10)}}, "podSelector": app(3)}]}]}),
        json!({"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend", "backend"]}]}, "ingress": [{"ports": [{"port": 9000, "endPort": 9100}]}]}),
        json!({"podSelector": app(3), "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}),
        json!({"podSelector": tier("backend"), "ingress": [{"from": [{"ipBlock": {"cidr": "198.18.0.0/15"}}]}]}),
    ];
    specs.into()
}

/// The teams namespaces belong to (label `team: tN`).
const TEAMS: usize = 10;

/// Team `t`'s two ClusterNetworkPolicies: in the Admin tier, its
/// namespaces take their own team's traffic, pass the next team's to
/// NetworkPolicy and deny every other namespace's, and may not reach the
/// nodes' network; in the Baseline tier, ingress is denied by default
/// and DNS egress accepted.
fn team_policies(t: usize) -> Vec<ClusterPolicy> {
    let team = |t: usize| json!({"matchLabels": {"team": format!("t{}", t % TEAMS)}});
    let specs = [
        json!({"tier": "Admin", "priority": 10 + t, "subject": {"namespaces": team(t)},
               "ingress": [
                   {"action": "Accept", "from": [{"namespaces": team(t)}]},
                   {"action": "Pass", "from": [{"namespaces": team(t + 1)}]},
                   {"action": "Deny", "from": [{"namespaces": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"range": {"start": 1, "end": 1023}}}}]}],
               "egress": [{"action": "Deny", "to": [{"networks": ["198.18.0.0/15"]}]}]}),
        json!({"tier": "Baseline", "priority": t, "subject": {"pods": {"namespaceSelector": team(t), "podSelector": {}}},
               "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
               "egress": [{"action": "Accept", "to": [{"networks": ["10.96.0.10/32"]}],
                           "protocols": [{"udp": {"destinationPort": {"number": 53}}}]}]}),
    ];
    specs
        .into_iter()
        .enumerate()
        .map(|(k, spec)| {
            let api: ClusterNetworkPolicy = serde_json::from_value(json!({
                "metadata": {"name": format!("team-{t}-{k}")},
                "spec": spec,
            }))
            .expect("a valid cluster-wide policy");
            ClusterPolicy::read(&api).expect("a known tier")
        })
        .collect()
}

/// Builds the table and writes it as the agent does after `applied`;
/// (build, write, how).
fn program(
    cluster: &Cluster,
    netns: &NetNs,
    applied: &mut Option<rules::Table>,
) -> Result<(Duration, Duration, Written)> {
    let started = Instant::now();
    let table = cluster.table();
    let built = started.elapsed();
    let started = Instant::now();
    let written = netns
        .run_in(|| writer::write(applied.as_ref(), &table))?
        .context("writing the table")?;
    let wrote = started.elapsed();
    *applied = Some(table);
    Ok((built, wrote, written))
}

fn remove_table(netns: &NetNs) -> Result<()> {
    let mut s = Script::new(Family::Ip, rules::TABLE);
    s.add_table().delete_table();
    Ok(nft::apply(s.as_str(), Some(netns))?)
}

/// One step's timings over `runs` repetitions: medians of build, write
/// and their sum, in ms.
struct Step {
    name: &'static str,
    build: Vec<Duration>,
    write: Vec<Duration>,
    /// How the last run wrote it.
    how: Option<Written>,
}

impl Step {
    fn medians(&self) -> (f64, f64, f64) {
        let ms = |v: &[Duration]| lab::median(v.iter().map(|d| d.as_secs_f64() * 1e3).collect());
        let total: Vec<Duration> = self
            .build
            .iter()
            .zip(&self.write)
            .map(|(a, b)| *a + *b)
            .collect();
        (ms(&self.build), ms(&self.write), ms(&total))
    }
}

/// The four steps for `cluster`, in `netns`.
fn measure(cluster: &mut Cluster, netns: &NetNs, runs: usize) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = [
        "from an empty table",
        "one policy changed",
        "one pod's labels changed",
        "one new pod",
    ]
    .into_iter()
    .map(|name| Step {
        name,
        build: Vec::new(),
        write: Vec::new(),
        how: None,
    })
    .collect();
    let mut record =
        |step: usize, cluster: &Cluster, applied: &mut Option<rules::Table>| -> Result<()> {
            let (b, w, how) = program(cluster, netns, applied)?;
            steps[step].build.push(b);
            steps[step].write.push(w);
            steps[step].how = Some(how);
            Ok(())
        };
    for run in 0..runs {
        remove_table(netns)?;
        let mut applied = None;
        record(0, cluster, &mut applied)?;
        // One policy changes what it selects and allows (back and forth).
        if let Some(policy) = cluster.policies.network.get_mut(1) {
            *policy = namespace_policies(0).swap_remove(if run % 2 == 0 { 2 } else { 1 });
        }
        record(1, cluster, &mut applied)?;
        // One local pod's tier label.
        let tier = if run % 2 == 0 { "db" } else { "frontend" };
        let local = cluster
            .pods
            .iter_mut()
            .find(|p| p.node.as_deref() == Some(NODE))
            .expect("a local pod");
        local.labels.insert("tier".into(), tier.into());
        record(2, cluster, &mut applied)?;
        // A new replica of a local pod (gone again before the next run).
        let mut new = cluster
            .pods
            .iter()
            .find(|p| p.node.as_deref() == Some(NODE) && p.namespace == "ns-5")
            .expect("a local pod in ns-5")
            .clone();
        new.name = format!("new-{run}");
        new.ip = Some("10.244.0.250".parse().unwrap());
        cluster.pods.push(new);
        record(3, cluster, &mut applied)?;
        cluster.pods.pop();
        program(cluster, netns, &mut applied)?;
    }
    Ok(steps)
}

pub fn run(args: Args) -> Result<()> {
    let runs = args.runs.max(1);
    let mut scratch = Namespaces::new("wbp");
    let (_, netns) = scratch.add("node");
    let mut with = Cluster::new(true, false);
    let mut without = Cluster::new(false, false);
    let mut tiers = Cluster::new(true, true);
    let script = with.table().script();
    println!(
        "{} policies, {} pods ({} on the node measured); table: {} lines, {} KiB",
        with.policies.network.len(),
        with.pods.len(),
        with.pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(NODE))
            .count(),
        script.lines().count(),
        script.len() / 1024
    );
    let steps_with = measure(&mut with, &netns, runs)?;
    let steps_without = measure(&mut without, &netns, runs)?;
    let steps_tiers = measure(&mut tiers, &netns, runs)?;
    remove_table(&netns)?;
    drop(scratch);
    print_steps(&steps_with, &steps_without, runs);
    println!(
        "with {} ClusterNetworkPolicies as well (table: {} lines):",
        tiers.policies.cluster.len(),
        tiers.table().script().lines().count()
    );
    print_steps(&steps_tiers, &steps_without, runs);
    if args.lab {
        under_policy(&args)?;
    }
    Ok(())
}

fn print_steps(steps_with: &[Step], steps_without: &[Step], runs: usize) {
    println!("median of {runs} runs, ms: build + write = total (how the last run wrote); without policies");
    for (a, b) in steps_with.iter().zip(steps_without) {
        let (build, write, total) = a.medians();
        let (_, _, base) = b.medians();
        let how = a.how.map(|h| format!("{h:?}")).unwrap_or_default();
        println!(
            "{:<26} {build:>7.2} + {write:>7.2} = {total:>7.2} ({how})   {base:>6.2}",
            a.name
        );
    }
}

/// The lab's pods: an iperf3 and netexec server on node-2, a client on
/// node-1.
const LAB_PODS: &str = "apiVersion: v1
kind: Pod
metadata: {name: srv, labels: {app: srv, tier: db}}
spec:
  nodeName: node-2
  containers:
  - {name: iperf, image: x, command: [iperf3, -s]}
  - {name: web, image: x, ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cli, labels: {app: cli}}
spec:
  nodeName: node-1
  containers: [{name: c, image: x}]
";

/// 100 namespaces with the bench's 990 policies (the first 99 namespaces'
/// ten each), and ten in `default` selecting the server: nine that do
/// not admit the client, the last one that does.
fn lab_policies() -> String {
    let mut docs: Vec<String> = (0..NAMESPACES)
        .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{n}, labels: {{team: t{}}}}}\n", n % 10))
        .collect();
    for n in 0..NAMESPACES - 1 {
        for (k, spec) in namespace_specs(n).into_iter().enumerate() {
            docs.push(policy_document(&format!("ns-{n}"), &format!("p{k}"), spec));
        }
    }
    let srv = json!({"matchLabels": {"app": "srv"}});
    for k in 0..9 {
        let spec = json!({"podSelector": srv, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{k}")}}}], "ports": [{"port": 9000 + k}]}]});
        docs.push(policy_document("default", &format!("srv-{k}"), spec));
    }
    let from_cli = json!({"podSelector": srv, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}], "ports": [{"port": 8080}, {"port": 5201}]}]});
    docs.push(policy_document("default", "srv-from-cli", from_cli));
    docs.join("---\n")
}

fn policy_document(ns: &str, name: &str, spec: serde_json::Value) -> String {
    let doc = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    format!("{doc}\n")
}

/// `connects` TCP connects from `netns` to `target`: (median, p99) in µs.
fn connect_latency(netns: &NetNs, target: SocketAddr, connects: usize) -> Result<(f64, f64)> {
    let mut micros = netns.run_in(|| -> Result<Vec<f64>> {
        (0..connects)
            .map(|_| {
                let started = Instant::now();
                TcpStream::connect_timeout(&target, Duration::from_secs(1))
                    .with_context(|| format!("connecting to {target}"))?;
                Ok(started.elapsed().as_secs_f64() * 1e6)
            })
            .collect()
    })??;
    micros.sort_by(f64::total_cmp);
    let p99 = micros[(micros.len() * 99 / 100).min(micros.len() - 1)];
    Ok((lab::median(micros), p99))
}

/// The resident memory of node `node`'s agent, in MiB.
fn agent_rss(lab: &lab::Lab, node: &str) -> Result<f64> {
    let state = weft_lab::layout::Layout::new(&lab.name)?.load()?;
    let pid = state
        .nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.agent_pid)
        .context("the agent's pid")?;
    Ok(crate::services::Memory::of(pid)?.rss_mib())
}

/// Without and with the policies, twice in turn: connect latency,
/// throughput and the server node's agent memory.
fn under_policy(args: &Args) -> Result<()> {
    let name = format!("bp{}", std::process::id() % 100_000);
    let (lab, _) = lab::up(&args.weft, lab::ControlPlane::Embedded, &name, 2, "vxlan")?;
    lab.run(&["apply", "-f", "-"], Some(LAB_PODS))?;
    std::thread::sleep(Duration::from_millis(500));
    let pods = lab.pods()?;
    let pod = |name: &str| pods.iter().find(|p| p["metadata"]["name"] == name).cloned();
    let srv = pod("srv").context("pod srv")?;
    let srv_ip: std::net::Ipv4Addr = srv["status"]["podIP"]
        .as_str()
        .context("srv's IP")?
        .parse()?;
    let cli_ns = NetNs::open(lab::netns_of(&lab, &pod("cli").context("pod cli")?))?;
    let policies = lab_policies();
    println!("\n## Under policy: 2-node vxlan lab, cli (node-1) → srv (node-2)");
    println!("policies | connect median µs | p99 µs | iperf3 Gbit/s | agent RSS (srv's node) MiB");
    for round in 0..2 {
        for with in [false, true] {
            if with {
                lab.run(&["apply", "-f", "-"], Some(&policies))?;
            } else if round > 0 {
                lab.run(&["delete", "-f", "-"], Some(&policies))?;
            }
            // Let the agents take it in, and check that srv is isolated
            // exactly when the policies are there.
            std::thread::sleep(Duration::from_secs(3));
            let node2 = NetNs::open(weft_datapath::netns::named_path(&format!(
                "wl-{}-node-2",
                lab.name
            )))?;
            let listed = nft::run(&["list", "table", "ip", rules::TABLE], Some(&node2))?;
            let isolated =
                listed.contains("jump ingress-0") && listed.contains(&srv_ip.to_string());
            anyhow::ensure!(
                isolated == with,
                "srv isolated: {isolated}, policies applied: {with}\n{listed}"
            );
            let (median, p99) =
                connect_latency(&cli_ns, SocketAddr::from((srv_ip, 8080)), args.connects)?;
            let bps = lab::iperf(&lab, &["cli"], &srv_ip.to_string(), args.seconds)?;
            let rss = agent_rss(&lab, "node-2")?;
            println!(
                "{:>8} | {median:>17.0} | {p99:>6.0} | {:>13.2} | {rss:>6.1}",
                if with { "1,000" } else { "none" },
                bps / 1e9
            );
        }
    }
    // The policies are applied again (the last round ended with them).
    in_effect(&lab, &cli_ns, SocketAddr::from((srv_ip, 8080)))
}

/// From issuing a change with `weft lab` until `cli` gets through to
/// `target`, in ms.
fn until_allowed(
    lab: &lab::Lab,
    change: &[&str],
    stdin: Option<&str>,
    cli: &NetNs,
    target: SocketAddr,
) -> Result<f64> {
    let started = Instant::now();
    lab.run(change, stdin)?;
    cli.run_in(|| loop {
        // The lab's round trip is ~0.1 ms: 5 ms tells a drop apart.
        if TcpStream::connect_timeout(&target, Duration::from_millis(5)).is_ok() {
            return Ok(started.elapsed().as_secs_f64() * 1e3);
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{change:?} never let cli in"
        );
    })?
}

/// How long a pod-label change and a policy change take to be in
/// effect, under the 1,000 policies: median of 5 each.
fn in_effect(lab: &lab::Lab, cli: &NetNs, target: SocketAddr) -> Result<()> {
    let other = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-from-other}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress: [{from: [{podSelector: {matchLabels: {app: other}}}], ports: [{port: 8080}]}]
";
    let (mut label, mut policy) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        // Denied as app=other; the label back lets it in.
        lab.run(&["label", "pod", "cli", "app=other", "--overwrite"], None)?;
        std::thread::sleep(Duration::from_millis(500));
        label.push(until_allowed(
            lab,
            &["label", "pod", "cli", "app=cli", "--overwrite"],
            None,
            cli,
            target,
        )?);
        // Denied again; a policy admitting app=other lets it in.
        lab.run(&["label", "pod", "cli", "app=other", "--overwrite"], None)?;
        std::thread::sleep(Duration::from_millis(500));
        policy.push(until_allowed(
            lab,
            &["apply", "-f", "-"],
            Some(other),
            cli,
            target,
        )?);
        lab.run(&["delete", "networkpolicy", "srv-from-other"], None)?;
        lab.run(&["label", "pod", "cli", "app=cli", "--overwrite"], None)?;
    }
    println!(
        "in effect, from the `weft lab` command to cli getting in (median of 5): pod label {:.1} ms, policy {:.1} ms",
        lab::median(label),
        lab::median(policy)
    );
    Ok(())
}
