//! weft against the real flanneld on the same lab topology, in one run
//! (`weft-bench lab --against-flannel`): two labs side by side with
//! Kubernetes' control plane, two nodes each, one running `weft agent` on
//! every node, the other flanneld v0.28.9 with pods wired as flannel's CNI
//! chain wires them and kube-proxy v1.36.3 for Services, as such clusters
//! run (`weft lab up --network flannel --proxy kube-proxy`). For vxlan and for
//! host-gw: pod-to-pod TCP throughput across the nodes (iperf3, runs
//! alternating between the labs), round-trip latency over one TCP
//! connection, the time from a pod's creation to its reachability from
//! the other node, and the time `weft lab node add` takes to join a node
//! (its network agent holds a subnet and routes to every node).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_datapath::NetNs;

use crate::lab::{self, median, netns_of, percentile, ControlPlane, Lab};

/// Bytes of each latency round trip.
const WORD: usize = 64;

/// One side of the comparison: a lab and the addresses in it.
struct Side<'a> {
    /// What runs its nodes' pod network (`weft lab --network`).
    network: &'static str,
    lab: Lab<'a>,
    server_ip: String,
    client: PathBuf,
    server: PathBuf,
}

/// The two pods of a side: `srv` (iperf3 server and netexec) on node-2,
/// `cli` on node-1.
const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: srv}\nspec:\n  nodeName: node-2\n  containers:\n  - {name: iperf, image: x, command: [iperf3, -s]}\n  - {name: web, image: agnhost, args: [netexec, --http-port=8080]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: cli}\nspec:\n  nodeName: node-1\n  containers: [{name: c, image: agnhost, args: [netexec, --http-port=8080]}]\n";

impl<'a> Side<'a> {
    fn up(weft: &'a PathBuf, label: &'static str, name: &str, backend: &str) -> Result<Self> {
        // flannel's nodes as clusters run them: with kube-proxy (nftables
        // mode) for Services, as weft's agents run their own proxy.
        let (network, proxy) = if label == "weft" {
            ("weft", "weft")
        } else {
            ("flannel", "kube-proxy")
        };
        let args = ["--network", network, "--proxy", proxy];
        let (lab, _) = lab::up_with(weft, ControlPlane::Kubernetes, name, 2, backend, &args)?;
        lab.run(&["apply", "-f", "-"], Some(PODS))?;
        let pods = lab.pods()?;
        let pod = |name: &str| {
            pods.iter()
                .find(|p| p["metadata"]["name"] == name)
                .cloned()
                .with_context(|| format!("pod {name} of the {label} lab"))
        };
        let (srv, cli) = (pod("srv")?, pod("cli")?);
        let server_ip = srv["status"]["podIP"]
            .as_str()
            .context("srv's address")?
            .to_string();
        Ok(Side {
            network,
            server: netns_of(&lab, &srv),
            client: netns_of(&lab, &cli),
            lab,
            server_ip,
        })
    }

    fn throughput(&self, seconds: u32) -> Result<f64> {
        lab::iperf(&self.lab, &["cli"], &self.server_ip, seconds)
    }

    /// `count` round trips of [`WORD`] bytes over one TCP connection from
    /// `cli` to an echo server in `srv`; their times in microseconds.
    fn round_trips(&self, count: usize) -> Result<Vec<f64>> {
        let listener = NetNs::open(&self.server)?
            .run_in(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
        let port = listener.local_addr()?.port();
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut conn, _) = listener.accept()?;
            let mut word = [0u8; WORD];
            while conn.read_exact(&mut word).is_ok() {
                conn.write_all(&word)?;
            }
            Ok(())
        });
        let to: SocketAddr = format!("{}:{port}", self.server_ip).parse()?;
        let mut conn = NetNs::open(&self.client)?
            .run_in(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))??;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut times = Vec::with_capacity(count);
        let mut word = [7u8; WORD];
        for _ in 0..count {
            let sent = Instant::now();
            conn.write_all(&word)?;
            conn.read_exact(&mut word)?;
            times.push(sent.elapsed().as_secs_f64() * 1e6);
        }
        drop(conn);
        echo.join()
            .map_err(|_| anyhow::anyhow!("the echo server panicked"))??;
        Ok(times)
    }

    /// A new pod on node-2: from `apply` returning to reachable from
    /// `cli` on node-1, in milliseconds.
    fn pod_reachable(&self, name: &str) -> Result<f64> {
        let sources = std::slice::from_ref(&self.client);
        lab::new_pod_reachable(&self.lab, name, "node-2", sources, Duration::from_secs(10))
    }

    /// `weft lab node add node-3` (of this side's kind), then removes it;
    /// seconds the add took.
    fn node_join(&self) -> Result<f64> {
        let started = Instant::now();
        self.lab
            .run(&["node", "add", "node-3", "--network", self.network], None)?;
        let took = started.elapsed().as_secs_f64();
        self.lab.run(&["node", "remove", "node-3"], None)?;
        Ok(took)
    }
}

/// Median, minimum and maximum.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(values.to_vec()), min, max)
}

/// Prints one metric of both sides, median (min–max), and the ratio of
/// the medians (weft / flanneld).
fn row(metric: &str, weft: &[f64], flannel: &[f64]) {
    let cell = |values: &[f64]| {
        let (median, min, max) = spread(values);
        format!("{median:.2} ({min:.2}–{max:.2})")
    };
    println!(
        "{metric:<40} {:>26} {:>26}  {:.2}x",
        cell(weft),
        cell(flannel),
        spread(weft).0 / spread(flannel).0
    );
}

pub fn run(weft: &PathBuf, reps: usize, seconds: u32) -> Result<()> {
    if reps < 1 {
        bail!("--throughput-reps must be at least 1");
    }
    let id = std::process::id() % 10_000;
    for backend in ["vxlan", "host-gw"] {
        let b = &backend[..1];
        let sides = [
            Side::up(weft, "weft", &format!("cw{b}{id}"), backend)?,
            Side::up(
                weft,
                "flanneld + kube-proxy",
                &format!("cf{b}{id}"),
                backend,
            )?,
        ];
        println!(
            "\n## {backend}: weft vs flanneld v0.28.9 + kube-proxy v1.36.3 (nftables), 2 nodes each (median (min–max); ratio of medians)"
        );
        println!(
            "{:<40} {:>26} {:>26}  ratio",
            "metric", "weft", "flanneld + kube-proxy"
        );
        let mut gbits = [Vec::new(), Vec::new()];
        for _ in 0..reps {
            for (side, out) in sides.iter().zip(gbits.iter_mut()) {
                out.push(side.throughput(seconds)? / 1e9);
            }
        }
        let metric = format!("pod-to-pod Gbit/s ({reps} × {seconds} s)");
        row(&metric, &gbits[0], &gbits[1]);
        // Ten blocks of 200 round trips per side, alternating; each
        // block's percentiles.
        let mut p50 = [Vec::new(), Vec::new()];
        let mut p99 = [Vec::new(), Vec::new()];
        for _ in 0..10 {
            for (i, side) in sides.iter().enumerate() {
                let block = side.round_trips(200)?;
                p50[i].push(percentile(&block, 50.0));
                p99[i].push(percentile(&block, 99.0));
            }
        }
        row("TCP round trip p50 (µs, 10 × 200)", &p50[0], &p50[1]);
        row("TCP round trip p99 (µs, 10 × 200)", &p99[0], &p99[1]);
        let mut reach = [Vec::new(), Vec::new()];
        for k in 0..5 {
            for (side, out) in sides.iter().zip(reach.iter_mut()) {
                out.push(side.pod_reachable(&format!("late{k}"))?);
            }
        }
        row(
            "new pod reachable after apply (ms, 5)",
            &reach[0],
            &reach[1],
        );
        let mut joins = [Vec::new(), Vec::new()];
        for _ in 0..3 {
            for (side, out) in sides.iter().zip(joins.iter_mut()) {
                out.push(side.node_join()?);
            }
        }
        row("node join: `node add` (s, 3)", &joins[0], &joins[1]);
    }
    Ok(())
}
