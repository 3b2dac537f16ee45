//! ADD/DEL latency (p50, p99) and the wall time of 100 ADDs with 20 in
//! parallel, weft-cni against the reference plugins: the newest release
//! (v1.10.0, built into the peers cache by `scripts/setup.sh --peers`) and
//! Debian's (containernetworking-plugins 1.1.1), each as `bridge` +
//! `host-local`; and again with a hostPort per pod (weft-cni alone; the
//! reference chains add `portmap`: v1.10 with its nftables backend,
//! Debian's with iptables, its only one). Each subject gets its own node
//! namespace and the runs are interleaved batch by batch, so all see the
//! same machine noise. Every namespace is removed at the end.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use weft_cni::invoke::{Call, Reply};
use weft_datapath::{netns, NetNs};

#[derive(clap::Args)]
pub struct Args {
    /// The weft-cni binary.
    #[arg(long, default_value = "target/release/weft-cni")]
    weft: PathBuf,
    /// Debian's reference bridge plugin (host-local and portmap beside it).
    #[arg(long, default_value = "/usr/lib/cni/bridge")]
    reference: PathBuf,
    /// Sequential ADD/DEL pairs per subject.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// ADDs in the parallel run, and how many run at once.
    #[arg(long, default_value_t = 100)]
    parallel_total: usize,
    #[arg(long, default_value_t = 20)]
    parallelism: usize,
    /// Repetitions of the parallel run (the median is reported).
    #[arg(long, default_value_t = 5)]
    parallel_reps: usize,
    /// Also print the raw numbers as JSON.
    #[arg(long)]
    json: bool,
}

/// One plugin of a subject's chain.
struct Link {
    plugin: PathBuf,
    conf: Value,
    /// It declares the `portMappings` capability (gets the hostPorts).
    port_mappings: bool,
}

struct Subject {
    label: String,
    chain: Vec<Link>,
    host_ports: bool,
    node: NetNs,
    pods: Vec<PathBuf>,
    add: Vec<Duration>,
    del: Vec<Duration>,
    parallel: Vec<Duration>,
    duplicates: usize,
    failures: usize,
}

/// Namespaces and state to remove however the run ends.
struct Cleanup {
    namespaces: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = netns::delete_named(ns);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn make_subject(
    label: String,
    chain: Vec<Link>,
    host_ports: bool,
    pods: usize,
    cleanup: &mut Cleanup,
) -> Result<Subject> {
    for link in &chain {
        if !link.plugin.is_file() {
            bail!("{label}: plugin {} not found", link.plugin.display());
        }
    }
    let base = format!("weft-bench-{}-{label}", std::process::id());
    let node = netns::create_named(&format!("{base}-node"))
        .context("creating namespaces (run as root)")?;
    cleanup.namespaces.push(format!("{base}-node"));
    let mut paths = Vec::with_capacity(pods);
    for i in 0..pods {
        let name = format!("{base}-p{i}");
        netns::create_named(&name)?;
        cleanup.namespaces.push(name.clone());
        paths.push(netns::named_path(&name));
    }
    Ok(Subject {
        label,
        chain,
        host_ports,
        node,
        pods: paths,
        add: Vec::new(),
        del: Vec::new(),
        parallel: Vec::new(),
        duplicates: 0,
        failures: 0,
    })
}

impl Subject {
    /// Runs `command` through the chain as a runtime does (ADD in order,
    /// each plugin given the previous one's result; DEL in reverse), with
    /// pod `pod`'s hostPort when the subject has them; the time of it all
    /// and the last answer.
    fn call(&self, command: &'static str, pod: usize, id: &str) -> Result<(Duration, Reply)> {
        let t = Instant::now();
        let mut previous: Option<Value> = None;
        let order: Vec<&Link> = match command {
            "DEL" => self.chain.iter().rev().collect(),
            _ => self.chain.iter().collect(),
        };
        let mut last = None;
        for link in order {
            let mut conf = link.conf.clone();
            if self.host_ports && link.port_mappings {
                conf["runtimeConfig"] = json!({"portMappings": [
                    {"hostPort": 20000 + pod, "containerPort": 8080, "protocol": "tcp"}
                ]});
            }
            if let Some(result) = previous.take() {
                conf["prevResult"] = result;
            }
            let call = Call {
                container_id: id,
                netns: Some(&self.pods[pod]),
                host: Some(&self.node),
                ..Call::new(&link.plugin, command)
            };
            let reply = call.run(&conf)?;
            if !reply.ok() {
                return Ok((t.elapsed(), reply));
            }
            if command == "ADD" {
                previous = Some(reply.json.clone());
            }
            last = Some(reply);
        }
        Ok((t.elapsed(), last.context("an empty chain")?))
    }

    fn id(&self, round: &str, pod: usize) -> String {
        format!("bench-{}-{round}-{pod}", self.label)
    }

    /// Sequential ADDs then DELs of pods `range`, each timed.
    fn sequential(&mut self, range: std::ops::Range<usize>, record: bool) -> Result<()> {
        for pod in range.clone() {
            let (t, r) = self.call("ADD", pod, &self.id("seq", pod))?;
            if !r.ok() {
                bail!("{} ADD failed: {}", self.label, r.stdout);
            }
            if record {
                self.add.push(t);
            }
        }
        for pod in range {
            let (t, r) = self.call("DEL", pod, &self.id("seq", pod))?;
            if !r.ok() {
                bail!("{} DEL failed: {}", self.label, r.stdout);
            }
            if record {
                self.del.push(t);
            }
        }
        Ok(())
    }

    /// `total` ADDs, `parallelism` at a time; returns the wall time.
    fn parallel(&mut self, total: usize, parallelism: usize, rep: usize) -> Result<()> {
        let next = AtomicUsize::new(0);
        let addresses = Mutex::new(Vec::new());
        let failures = AtomicUsize::new(0);
        let round = format!("par{rep}");
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..parallelism {
                s.spawn(|| loop {
                    let pod = next.fetch_add(1, Ordering::SeqCst);
                    if pod >= total {
                        break;
                    }
                    match self.call("ADD", pod, &self.id(&round, pod)) {
                        Ok((_, r)) if r.ok() => {
                            let addr = r.json["ips"][0]["address"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string();
                            addresses.lock().unwrap().push(addr);
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        self.parallel.push(t.elapsed());
        let addresses = addresses.into_inner().unwrap();
        let unique: HashSet<&String> = addresses.iter().collect();
        self.duplicates += addresses.len() - unique.len();
        self.failures += failures.load(Ordering::SeqCst);
        for pod in 0..total {
            let (_, r) = self.call("DEL", pod, &self.id(&round, pod))?;
            if !r.ok() {
                bail!(
                    "{} DEL after the parallel run failed: {}",
                    self.label,
                    r.stdout
                );
            }
        }
        Ok(())
    }
}

/// The `p`th percentile of `samples`, in milliseconds.
fn percentile(samples: &[Duration], p: f64) -> f64 {
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    crate::lab::percentile(&ms, p)
}

/// What is compared: weft-cni, the newest reference plugins, Debian's.
const IMPLEMENTATIONS: [(&str, &str); 3] = [
    ("weft", "weft-cni"),
    ("ref110", "reference v1.10.0"),
    ("deb111", "Debian's 1.1.1"),
];

/// The chain of `implementation` (an [`IMPLEMENTATIONS`] label), its
/// state in `data_dir`. The same network for all: a /16, bridge cni0 with
/// the gateway, default route, hairpin, no masquerade (the reference's
/// default), cniVersion 1.0.0 (the newest Debian's plugins speak).
fn chain(implementation: &str, args: &Args, data_dir: &Path) -> Result<Vec<Link>> {
    let network = |kind: &str, ipam: Value| {
        json!({
            "cniVersion": "1.0.0", "name": "bench", "type": kind, "bridge": "cni0",
            "isGateway": true, "isDefaultGateway": true, "hairpinMode": true, "ipam": ipam,
        })
    };
    let ranges = json!([[{"subnet": "10.66.0.0/16"}]]);
    let host_local = json!({"type": "host-local", "ranges": ranges, "dataDir": data_dir});
    let portmap = |plugin: PathBuf, backend: Option<&str>| {
        let mut conf = json!({
            "cniVersion": "1.0.0", "name": "bench", "type": "portmap",
            "capabilities": {"portMappings": true},
        });
        if let Some(backend) = backend {
            conf["backend"] = json!(backend);
        }
        Link {
            plugin,
            conf,
            port_mappings: true,
        }
    };
    let bridge = |plugin: PathBuf| Link {
        plugin,
        conf: network("bridge", host_local.clone()),
        port_mappings: false,
    };
    Ok(match implementation {
        "weft" => {
            let mut conf = network("weft-cni", json!({"ranges": ranges, "dataDir": data_dir}));
            conf["capabilities"] = json!({"portMappings": true});
            vec![Link {
                plugin: args.weft.clone(),
                conf,
                port_mappings: true,
            }]
        }
        "ref110" => {
            let plugin = |name| weft_lab::control_plane::reference_cni_plugin(name);
            vec![
                bridge(plugin("bridge")?),
                portmap(plugin("portmap")?, Some("nftables")),
            ]
        }
        _ => vec![
            bridge(args.reference.clone()),
            portmap(args.reference.with_file_name("portmap"), None),
        ],
    })
}

pub fn run(args: Args) -> Result<()> {
    let pods = args.iterations.max(args.parallel_total);
    let mut cleanup = Cleanup {
        namespaces: Vec::new(),
        dirs: Vec::new(),
    };
    eprintln!("setting up {pods} pod namespaces per subject ...");
    let mut subjects = Vec::new();
    for host_ports in [false, true] {
        for (implementation, _) in IMPLEMENTATIONS {
            let label = format!("{implementation}{}", if host_ports { "hp" } else { "" });
            let data_dir =
                std::env::temp_dir().join(format!("weft-bench-{}-{label}", std::process::id()));
            cleanup.dirs.push(data_dir.clone());
            let mut chain = chain(implementation, &args, &data_dir)?;
            if !host_ports {
                // Without hostPorts a runtime's chain ends at the bridge.
                chain.retain(|link| link.conf["type"] != "portmap");
            }
            subjects.push(make_subject(label, chain, host_ports, pods, &mut cleanup)?);
        }
    }
    for s in subjects.iter_mut() {
        s.sequential(0..10.min(pods), false)?; // warm-up: bridge, page cache
    }
    let batch = 20;
    for start in (0..args.iterations).step_by(batch) {
        for s in subjects.iter_mut() {
            s.sequential(start..(start + batch).min(args.iterations), true)?;
        }
    }
    eprintln!(
        "sequential done; {} ADDs x {} in parallel ...",
        args.parallel_total, args.parallelism
    );
    for rep in 0..args.parallel_reps {
        for s in subjects.iter_mut() {
            s.parallel(args.parallel_total, args.parallelism, rep)?;
        }
    }
    for (title, group) in [
        ("bridge + host-local", &subjects[..3]),
        (
            "with a hostPort per pod (reference: + portmap)",
            &subjects[3..],
        ),
    ] {
        report(title, group, &args);
    }
    if subjects.iter().any(|s| s.duplicates > 0 || s.failures > 0) {
        bail!("duplicates or failures in the parallel run");
    }
    Ok(())
}

fn report(title: &str, subjects: &[Subject], args: &Args) {
    let metric = |name: &str, pick: &dyn Fn(&Subject) -> f64| {
        let values: Vec<f64> = subjects.iter().map(pick).collect();
        print!("{name:<42}");
        for v in &values {
            print!(" {v:>10.2}");
        }
        for v in &values[1..] {
            print!(" {:>9.2}x", values[0] / v);
        }
        println!();
    };
    println!(
        "\n## {title}: {} sequential ADD/DEL pairs each, {} parallel runs",
        args.iterations, args.parallel_reps
    );
    print!("{:<42}", "metric");
    for (_, name) in IMPLEMENTATIONS {
        print!(" {:>10}", name.split_whitespace().last().unwrap_or(name));
    }
    println!(" {:>10} {:>10}", "weft/1.10", "weft/1.1.1");
    metric("ADD p50 (ms)", &|s| percentile(&s.add, 50.0));
    metric("ADD p99 (ms)", &|s| percentile(&s.add, 99.0));
    metric("DEL p50 (ms)", &|s| percentile(&s.del, 50.0));
    metric("DEL p99 (ms)", &|s| percentile(&s.del, 99.0));
    metric(
        &format!(
            "{} ADDs, {} parallel: wall (ms, median)",
            args.parallel_total, args.parallelism
        ),
        &|s| percentile(&s.parallel, 50.0),
    );
    let counts: Vec<String> = subjects
        .iter()
        .map(|s| format!("{} {}/{}", s.label, s.duplicates, s.failures))
        .collect();
    println!("duplicates/failed ADDs: {}", counts.join(", "));
    if args.json {
        let raw: serde_json::Map<String, Value> = subjects
            .iter()
            .map(|s| {
                let ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>();
                (
                    s.label.clone(),
                    json!({"add_ms": ms(&s.add), "del_ms": ms(&s.del), "parallel_ms": ms(&s.parallel)}),
                )
            })
            .collect();
        println!("{}", Value::Object(raw));
    }
}
