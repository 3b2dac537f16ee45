//! The lab benchmarks of the node agent and its backends, all in one run:
//! `lab up` time for 3 and 10 nodes; a 10-node lab with 100 pods, from
//! nothing to every pod reachable; the time from a pod's creation (its CNI
//! ADD returned) to its reachability from every other node; and iperf3
//! throughput pod-to-pod across nodes against node-to-node on the same
//! underlay, for vxlan and host-gw, interleaved.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use weft_datapath::{netns, NetNs};
use weft_lab::probe::{self, Outcome, Protocol};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "target/release/weft")]
    weft: PathBuf,
    /// Repetitions of each timing.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// `kubernetes`: the labs run Kubernetes' own control plane, the pods
    /// come from `kubectl apply` of a Deployment (lab up and 100 pods only:
    /// the datapath is the same in both modes).
    #[arg(long, value_enum, default_value = "embedded")]
    control_plane: ControlPlane,
    /// Instead: weft against the real flanneld v0.28.9 on the same
    /// topology (two Kubernetes-mode labs, vxlan and host-gw).
    #[arg(long)]
    against_flannel: bool,
    /// iperf3 runs per side in `--against-flannel` (alternating).
    #[arg(long, default_value_t = 10)]
    throughput_reps: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ControlPlane {
    Embedded,
    Kubernetes,
}

impl ControlPlane {
    fn flag(self) -> &'static str {
        match self {
            ControlPlane::Embedded => "embedded",
            ControlPlane::Kubernetes => "kubernetes",
        }
    }
}

pub(crate) struct Lab<'a> {
    weft: &'a PathBuf,
    pub(crate) name: String,
    control_plane: ControlPlane,
}

impl Lab<'_> {
    pub(crate) fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = Command::new(self.weft);
        cmd.arg("lab")
            .arg(args[0])
            .args(["--name", &self.name])
            .args(&args[1..]);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "weft lab {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn pods(&self) -> Result<Vec<Value>> {
        let v: Value =
            serde_json::from_str(&self.run(&["get", "pods", "-A", "-o", "json"], None)?)?;
        Ok(v["items"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.weft)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

/// The `p`th percentile of `values` (nearest rank); NaN for none.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    match sorted.len() {
        0 => f64::NAN,
        n => sorted[((p / 100.0) * (n - 1) as f64).round() as usize],
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// What `weft lab up` took, and (Kubernetes mode) how long of that the
/// API server took to become ready.
pub(crate) struct UpTimes {
    total: f64,
    apiserver: Option<f64>,
}

pub(crate) fn up<'a>(
    weft: &'a PathBuf,
    control_plane: ControlPlane,
    name: &str,
    nodes: u32,
    backend: &str,
) -> Result<(Lab<'a>, UpTimes)> {
    up_with(weft, control_plane, name, nodes, backend, &[])
}

/// [`up`] with more `weft lab up` arguments.
pub(crate) fn up_with<'a>(
    weft: &'a PathBuf,
    control_plane: ControlPlane,
    name: &str,
    nodes: u32,
    backend: &str,
    extra: &[&str],
) -> Result<(Lab<'a>, UpTimes)> {
    let lab = Lab {
        weft,
        name: name.into(),
        control_plane,
    };
    let t = Instant::now();
    let nodes = nodes.to_string();
    let args = ["up", "--nodes", &nodes, "--backend", backend];
    let out = lab.run(
        &[&args[..], &["--control-plane", control_plane.flag()], extra].concat(),
        None,
    )?;
    let total = t.elapsed().as_secs_f64();
    // "kube-apiserver ready after 2.91 s"
    let apiserver = out
        .lines()
        .find_map(|l| l.strip_prefix("kube-apiserver ready after "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
    Ok((lab, UpTimes { total, apiserver }))
}

impl Lab<'_> {
    /// A Deployment of `replicas` netexec pods: applied by `weft lab apply`
    /// (embedded) or `kubectl apply` (Kubernetes); returns once applied.
    fn deploy(&self, replicas: u32) -> Result<()> {
        let manifest = deployment(replicas);
        if self.control_plane == ControlPlane::Embedded {
            return self.run(&["apply", "-f", "-"], Some(&manifest)).map(drop);
        }
        let kubeconfig = self.run(&["kubeconfig"], None)?;
        let mut kubectl = Command::new(weft_lab::control_plane::peer("kubectl")?)
            .args(["--kubeconfig", kubeconfig.trim(), "apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        if let Some(mut pipe) = kubectl.stdin.take() {
            use std::io::Write;
            pipe.write_all(manifest.as_bytes())?;
        }
        if !kubectl.wait()?.success() {
            bail!("kubectl apply failed");
        }
        Ok(())
    }

    /// Waits until `count` pods run with an address; they come back.
    fn running_pods(&self, count: usize, limit: Duration) -> Result<Vec<Value>> {
        let start = Instant::now();
        loop {
            let pods: Vec<Value> = self
                .pods()?
                .into_iter()
                .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
                .collect();
            if pods.len() >= count {
                return Ok(pods);
            }
            if start.elapsed() > limit {
                bail!("{} of {count} pods running after {limit:?}", pods.len());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers: [{{name: c, image: agnhost, args: [netexec, --http-port=8080]}}]\n"
    )
}

/// Waits until a pod in each of `sources` (pod namespaces) reaches `target`.
pub(crate) fn reachable_from_all(
    sources: &[PathBuf],
    target: SocketAddr,
    limit: Duration,
) -> Result<f64> {
    let start = Instant::now();
    let times: Vec<Result<f64>> = std::thread::scope(|s| {
        sources
            .iter()
            .map(|ns| {
                s.spawn(move || -> Result<f64> {
                    let ns = NetNs::open(ns)?;
                    ns.run_in(|| loop {
                        if matches!(
                            probe::probe_blocking(
                                target,
                                Protocol::Tcp,
                                Duration::from_millis(200)
                            ),
                            Outcome::Ok { .. }
                        ) {
                            return Ok(start.elapsed().as_secs_f64());
                        }
                        if start.elapsed() > limit {
                            bail!("{target} not reachable within {limit:?}");
                        }
                    })?
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    times.into_iter().try_fold(0.0f64, |m, t| Ok(m.max(t?)))
}

/// Applies a netexec pod `name` pinned to `node`; the milliseconds from
/// `apply` returning (its CNI ADD done, its server started) until a pod in
/// each of `sources` reaches it. Includes one `get pods` to learn its
/// address, so it is an upper bound.
pub(crate) fn new_pod_reachable(
    lab: &Lab,
    name: &str,
    node: &str,
    sources: &[PathBuf],
    limit: Duration,
) -> Result<f64> {
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: agnhost, args: [netexec, --http-port=8080], ports: [{{containerPort: 8080}}]}}]\n"
    );
    lab.run(&["apply", "-f", "-"], Some(&manifest))?;
    let returned = Instant::now();
    let pod = lab
        .pods()?
        .into_iter()
        .find(|p| p["metadata"]["name"] == name)
        .with_context(|| format!("the new pod {name}"))?;
    let target: SocketAddr = format!(
        "{}:8080",
        pod["status"]["podIP"].as_str().unwrap_or_default()
    )
    .parse()?;
    let lookup = returned.elapsed().as_secs_f64();
    let reach = reachable_from_all(sources, target, limit)?;
    Ok((lookup + reach) * 1e3)
}

/// A pod's network namespace, as the lab's kubelet names it.
pub(crate) fn netns_of(lab: &Lab, pod: &Value) -> PathBuf {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let layout = weft_lab::layout::Layout::new(&lab.name).expect("a valid lab name");
    netns::named_path(&layout.pod_ns(uid))
}

pub fn run(args: Args) -> Result<()> {
    let weft = &args.weft;
    if !weft.is_file() {
        bail!(
            "{} not found; run `cargo build --release` first",
            weft.display()
        );
    }
    if args.against_flannel {
        return crate::flannel::run(weft, args.throughput_reps, args.seconds);
    }
    let mode = args.control_plane;
    let id = std::process::id() % 10_000;
    println!(
        "## lab up, control plane {} (median of {})",
        mode.flag(),
        args.reps
    );
    for nodes in [3u32, 10] {
        let (mut t, mut api) = (Vec::new(), Vec::new());
        for r in 0..args.reps {
            let (_lab, times) = up(weft, mode, &format!("bu{nodes}x{r}{id}"), nodes, "vxlan")?;
            t.push(times.total);
            api.extend(times.apiserver);
        }
        let apiserver = if api.is_empty() {
            String::new()
        } else {
            format!(" (kube-apiserver ready after {:.2} s of it)", median(api))
        };
        println!(
            "lab up, {nodes:>2} nodes (vxlan): {:.3} s{apiserver}",
            median(t)
        );
    }

    println!("\n## 10 nodes + 100 pods, from nothing to every pod reachable from every node");
    let mut totals = Vec::new();
    let mut applied = Vec::new();
    let mut adds = Vec::new();
    for r in 0..args.reps {
        let start = Instant::now();
        let (lab, _) = up(weft, mode, &format!("bp{r}{id}"), 10, "vxlan")?;
        let apply = Instant::now();
        lab.deploy(100)?;
        let pods = lab.running_pods(100, Duration::from_secs(60))?;
        // One probing pod on each node.
        let mut per_node: std::collections::BTreeMap<String, PathBuf> = Default::default();
        for p in &pods {
            let node = p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            per_node.entry(node).or_insert_with(|| netns_of(&lab, p));
        }
        if per_node.len() != 10 {
            bail!("expected pods on all 10 nodes, got {}", per_node.len());
        }
        let sources: Vec<PathBuf> = per_node.into_values().collect();
        for p in &pods {
            let target: SocketAddr =
                format!("{}:8080", p["status"]["podIP"].as_str().context("pod IP")?).parse()?;
            reachable_from_all(&sources, target, Duration::from_secs(10))?;
        }
        applied.push(apply.elapsed().as_secs_f64());
        totals.push(start.elapsed().as_secs_f64());
        if mode == ControlPlane::Kubernetes {
            continue;
        }
        // A new pod on node-1: from ADD returned to reachable from all 10 nodes.
        for k in 0..5 {
            let name = format!("late{k}");
            let reach = new_pod_reachable(&lab, &name, "node-1", &sources, Duration::from_secs(5))?;
            adds.push(reach);
        }
    }
    println!(
        "10 nodes + 100 pods up and fully reachable: {:.2} s (median of {})",
        median(totals),
        args.reps
    );
    println!(
        "100-pod Deployment applied to every pod reachable from every node: {:.2} s (median of {})",
        median(applied),
        args.reps
    );
    if mode == ControlPlane::Kubernetes {
        return Ok(());
    }
    println!(
        "new pod reachable from all 10 nodes after `apply` returned: median {:.1} ms, max {:.1} ms ({} pods; includes one `get pods` to learn its IP)",
        median(adds.clone()),
        adds.iter().cloned().fold(0.0, f64::max),
        adds.len()
    );

    println!(
        "\n## iperf3 throughput, pod-to-pod across nodes vs node-to-node ({} s runs, interleaved)",
        args.seconds
    );
    for backend in ["vxlan", "host-gw"] {
        let (lab, _) = up(weft, mode, &format!("bi{}{id}", &backend[..1]), 2, backend)?;
        let server_pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: srv}\nspec:\n  nodeName: node-2\n  containers: [{name: c, image: x, command: [iperf3, -s]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cli}\nspec:\n  nodeName: node-1\n  containers: [{name: c, image: x}]\n";
        lab.run(&["apply", "-f", "-"], Some(server_pod))?;
        std::thread::sleep(Duration::from_millis(300));
        let pods = lab.pods()?;
        let srv_ip = pods
            .iter()
            .find(|p| p["metadata"]["name"] == "srv")
            .and_then(|p| p["status"]["podIP"].as_str())
            .context("srv")?
            .to_string();
        let node2 = NetNs::open(netns::named_path(&format!("wl-{}-node-2", lab.name)))?;
        let mut underlay_server: Child = node2
            .command("iperf3")
            .args(["-s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(300));
        let (mut pod_bps, mut node_bps) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            node_bps.push(iperf(
                &lab,
                &["--node", "node-1"],
                "198.18.0.12",
                args.seconds,
            )?);
            pod_bps.push(iperf(&lab, &["cli"], &srv_ip, args.seconds)?);
        }
        let _ = underlay_server.kill();
        let _ = underlay_server.wait();
        let (p, n) = (median(pod_bps), median(node_bps));
        println!(
            "{backend:<8} pod-to-pod {:>6.2} Gbit/s, node-to-node {:>6.2} Gbit/s, ratio {:.2}x",
            p / 1e9,
            n / 1e9,
            p / n
        );
    }
    Ok(())
}

pub(crate) fn iperf(lab: &Lab, target: &[&str], server: &str, seconds: u32) -> Result<f64> {
    let secs = seconds.to_string();
    let mut args = vec!["exec"];
    args.extend_from_slice(target);
    args.extend(["--", "iperf3", "-c", server, "-t", &secs, "-J"]);
    let out = lab.run(&args, None)?;
    let v: Value = serde_json::from_str(&out).context("iperf3 JSON")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 result")
}
