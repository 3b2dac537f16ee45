//! ADD/DEL latency (p50, p99) and the wall time of 100 ADDs with 20 in
//! parallel, weft-cni against the reference `bridge` + `host-local` plugins
//! (Debian's containernetworking-plugins). Each plugin gets its own node
//! namespace and the runs are interleaved batch by batch, so both see the
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
    /// The reference bridge plugin (host-local must sit beside it).
    #[arg(long, default_value = "/usr/lib/cni/bridge")]
    reference: PathBuf,
    /// Sequential ADD/DEL pairs per plugin.
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

struct Subject {
    label: &'static str,
    plugin: PathBuf,
    conf: Value,
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
    label: &'static str,
    plugin: &Path,
    conf: Value,
    pods: usize,
    cleanup: &mut Cleanup,
) -> Result<Subject> {
    if !plugin.is_file() {
        bail!("{label} plugin {} not found", plugin.display());
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
        plugin: plugin.to_path_buf(),
        conf,
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
    fn call(&self, command: &'static str, pod: usize, id: &str) -> Result<(Duration, Reply)> {
        let call = Call {
            container_id: id,
            netns: Some(&self.pods[pod]),
            host: Some(&self.node),
            ..Call::new(&self.plugin, command)
        };
        let t = Instant::now();
        let reply = call.run(&self.conf)?;
        Ok((t.elapsed(), reply))
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

fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    if ms.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (ms.len() - 1) as f64).round() as usize;
    ms[idx]
}

pub fn run(args: Args) -> Result<()> {
    let pods = args.iterations.max(args.parallel_total);
    let mut cleanup = Cleanup {
        namespaces: Vec::new(),
        dirs: Vec::new(),
    };
    let dir = |label: &str| {
        std::env::temp_dir().join(format!("weft-bench-{}-{label}", std::process::id()))
    };
    cleanup.dirs.extend([dir("weft"), dir("reference")]);
    // The same network for both: a /16, bridge cni0 with the gateway, default
    // route, hairpin, no masquerade (the reference's default).
    let weft_conf = json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "weft-cni", "bridge": "cni0",
        "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
        "ipam": {"ranges": [[{"subnet": "10.66.0.0/16"}]], "dataDir": dir("weft")},
    });
    let reference_conf = json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cni0",
        "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.66.0.0/16"}]], "dataDir": dir("reference")},
    });
    eprintln!("setting up {pods} pod namespaces per plugin ...");
    let mut subjects = [
        make_subject("weft", &args.weft, weft_conf, pods, &mut cleanup)?,
        make_subject(
            "reference",
            &args.reference,
            reference_conf,
            pods,
            &mut cleanup,
        )?,
    ];
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
    report(&subjects, &args);
    if subjects.iter().any(|s| s.duplicates > 0 || s.failures > 0) {
        bail!("duplicates or failures in the parallel run");
    }
    Ok(())
}

fn report(subjects: &[Subject], args: &Args) {
    let [weft, reference] = subjects else { return };
    let rows = [
        (
            "ADD p50 (ms)",
            percentile(&weft.add, 50.0),
            percentile(&reference.add, 50.0),
        ),
        (
            "ADD p99 (ms)",
            percentile(&weft.add, 99.0),
            percentile(&reference.add, 99.0),
        ),
        (
            "DEL p50 (ms)",
            percentile(&weft.del, 50.0),
            percentile(&reference.del, 50.0),
        ),
        (
            "DEL p99 (ms)",
            percentile(&weft.del, 99.0),
            percentile(&reference.del, 99.0),
        ),
        (
            "100 ADDs, 20 parallel: wall (ms, median)",
            percentile(&weft.parallel, 50.0),
            percentile(&reference.parallel, 50.0),
        ),
    ];
    println!("weft-cni vs reference bridge+host-local: {} sequential ADD/DEL pairs each, {} parallel runs", args.iterations, args.parallel_reps);
    println!(
        "{:<42} {:>10} {:>10} {:>8}",
        "metric", "weft", "reference", "ratio"
    );
    for (name, w, r) in rows {
        println!("{name:<42} {w:>10.2} {r:>10.2} {:>7.2}x", w / r);
    }
    println!(
        "duplicates: weft {}, reference {}; failed ADDs: weft {}, reference {}",
        weft.duplicates, reference.duplicates, weft.failures, reference.failures
    );
    if args.json {
        let raw = |s: &Subject| {
            json!({
                "add_ms": s.add.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                "del_ms": s.del.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
                "parallel_ms": s.parallel.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
            })
        };
        println!(
            "{}",
            json!({"weft": raw(weft), "reference": raw(reference)})
        );
    }
}
