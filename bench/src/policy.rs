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
//! each the median of `--runs`, next to the same step without policies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use weft_agent::policy::writer::{self, Written};
use weft_datapath::nft::{self, Family};
use weft_datapath::nft_script::Script;
use weft_datapath::scratch::Namespaces;
use weft_datapath::NetNs;
use weft_policy::model::{NamedPort, NamespaceLabels, Pod, Policy, Protocol};
use weft_policy::rules;

#[derive(clap::Args)]
pub struct Args {
    /// Repetitions of each step (the median is reported).
    #[arg(long, default_value_t = 15)]
    runs: usize,
}

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 10;
const NODES: usize = 10;
const NODE: &str = "node-0";

/// The cluster the rules are made from.
struct Cluster {
    policies: Vec<Policy>,
    pods: Vec<Pod>,
    namespaces: NamespaceLabels,
}

impl Cluster {
    fn new(with_policies: bool) -> Cluster {
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
        let policies = if with_policies {
            (0..NAMESPACES).flat_map(namespace_policies).collect()
        } else {
            Vec::new()
        };
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
    specs
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
        let ms = |v: &[Duration]| {
            let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
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
        if let Some(policy) = cluster.policies.get_mut(1) {
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
    let mut with = Cluster::new(true);
    let mut without = Cluster::new(false);
    let script = with.table().script();
    println!(
        "{} policies, {} pods ({} on the node measured); table: {} lines, {} KiB",
        with.policies.len(),
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
    remove_table(&netns)?;
    println!("median of {runs} runs, ms: build + write = total (how the last run wrote); without policies");
    for (a, b) in steps_with.iter().zip(&steps_without) {
        let (build, write, total) = a.medians();
        let (_, _, base) = b.medians();
        let how = a.how.map(|h| format!("{h:?}")).unwrap_or_default();
        println!(
            "{:<26} {build:>7.2} + {write:>7.2} = {total:>7.2} ({how})   {base:>6.2}",
            a.name
        );
    }
    Ok(())
}
