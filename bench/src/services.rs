//! The Service proxy at scale (issue #4): 10,000 Services × 10 endpoints
//! through the real `weft agent`. By default the agent reads weft's
//! embedded store, and kube-proxy's numbers from issue #4 are printed as
//! the reference; with `--kube` ([`kube_proxy`]) both the agent and the
//! real kube-proxy read a real kube-apiserver and are measured side by side.
//!
//! - **full sync**: the store holds every Service and EndpointSlice before
//!   the agent starts; from spawning the agent to the first connection
//!   through a Service (end to end), and the agent's own report.
//! - **one change**: a new Service and its EndpointSlice, in both arrival
//!   orders — back to back, and with the second object written only after
//!   the first one is in effect — and an endpoint change of an existing
//!   Service; from just before the store write to the first successful
//!   connection to the ClusterIP.
//! - **memory**: the agent's VmRSS and VmHWM after the full sync and after
//!   the changes (the `nft` children are not the agent).
//! - **restart**: a new agent over the table the last one left — time to
//!   its full sync, and connects to a Service all the while (none may fail).
//! - **first-connection latency**: fresh TCP connects to a ClusterIP with
//!   10 and with 10,000 Services present (two agents side by side,
//!   interleaved batches), and straight to the endpoint as a baseline.
//!
//! - **where the time goes**: while it waits, the benchmark samples the
//!   agent every millisecond — its log, the `nft` processes its proxy
//!   thread runs, its RSS — and times a near-empty `nft -c -f` run against
//!   the large and the small table.
//!
//! Everything runs in network namespaces created here (`wbs-<pid>-…`) and
//! removed on exit (also on a panic or SIGINT/SIGTERM/SIGHUP): per test bed
//! a node (the agent, the client), a pod (the TCP listeners) and a peer on
//! the node's underlay veth, which answers any ClusterIP no rule caught
//! with a TCP reset (so "not yet" is a fast refusal, and conntrack never
//! keeps a stale un-NATed entry around). Nothing is routed to the host.

mod kube_proxy;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;
use weft_datapath::{netns, NetNs};
use weft_store::Store;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "target/release/weft")]
    weft: PathBuf,
    /// Services in the large table.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per Service (at most 100).
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Services in the small table (the latency comparison).
    #[arg(long, default_value_t = 10)]
    small: usize,
    /// Repetitions of each change measurement.
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Sequential connects per latency target.
    #[arg(long, default_value_t = 200)]
    connects: usize,
    /// Where the temporary stores and logs go.
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// Keep the agents' logs in this directory after the run.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Extra environment for the agents (diagnosis, e.g.
    /// MALLOC_ARENA_MAX=1); repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    agent_env: Vec<String>,
    /// At the very end, call malloc_trim(0) in the large table's agent
    /// through gdb and report its RSS after (live versus retained memory).
    #[arg(long)]
    malloc_trim: bool,
    /// After the change measurements, pause this many seconds with the
    /// large table in place (to look at it with `ip netns exec … nft`).
    #[arg(long, default_value_t = 0)]
    inspect: u64,
    /// Side by side with kube-proxy (nftables mode), both reading the
    /// objects from a real kube-apiserver (the peers' build).
    #[arg(long)]
    kube: bool,
    /// With --kube: which proxy is measured first (they take turns, one
    /// running at a time).
    #[arg(long, value_enum, default_value_t = kube_proxy::First::KubeProxy)]
    first: kube_proxy::First,
    /// With --kube: concurrent API requests while writing the objects.
    #[arg(long, default_value_t = 32)]
    writers: usize,
}

/// kube-proxy v1.36.2, nftables mode, 10,000 Services × 10 endpoints, on
/// this project's machines (issue #4).
const REF_FULL_SYNC_S: f64 = 12.5;
const REF_CHANGE_S: (f64, f64) = (3.6, 4.1);
const REF_SERVICE_BEFORE_SLICE_S: f64 = 8.4;
const REF_RSS_MIB: (f64, f64) = (277.0, 516.0);

const NODE: &str = "node-1";
const NAMESPACE: &str = "bench";
const NODE_IP: &str = "198.18.0.10";
const PEER_IP: &str = "198.18.0.1";
const POD_GATEWAY: &str = "10.244.1.1";
const SERVICE_CIDR: &str = "10.96.0.0/16";
const TARGET_PORT: u16 = 8080;
/// How long one "not yet" connect may take before it counts as not yet.
const PROBE_TIMEOUT: Duration = Duration::from_millis(20);
const POLL: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------
// Namespaces and processes, always cleaned up.

/// What must go if the run ends abruptly (a panic aborts without running
/// drops; a signal skips them too): our namespaces and agents' PIDs.
struct Registry {
    namespaces: Vec<String>,
    agents: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: Vec::new(),
    agents: Vec::new(),
    dirs: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops our agents (by PID: they are our unreaped children, so the PIDs
/// cannot have been reused) and removes our namespaces.
fn emergency_cleanup() {
    let Ok(mut r) = REGISTRY.try_lock() else {
        return;
    };
    for pid in r.agents.drain(..) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    for name in r.namespaces.drain(..).rev() {
        let _ = netns::delete_named(&name);
    }
    for dir in r.dirs.drain(..) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Cleans up on a panic or on SIGINT/SIGTERM/SIGHUP. Must run before any
/// other thread starts (the signals are blocked in every thread and taken
/// by one thread that waits for them).
fn install_cleanup() -> Result<()> {
    use nix::sys::signal::SigSet;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        emergency_cleanup();
        previous(info);
    }));
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    set.thread_block()?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("{sig}: cleaning up");
            emergency_cleanup();
            std::process::exit(128 + sig as i32);
        }
    });
    Ok(())
}

/// The namespaces this run created; removed on drop.
#[derive(Default)]
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(&mut self, name: &str) -> Result<NetNs> {
        let ns = netns::create_named(name)?;
        self.0.push(name.to_string());
        registry().namespaces.push(name.to_string());
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.0.drain(..).rev() {
            if let Err(e) = netns::delete_named(&name) {
                eprintln!("warning: removing namespace {name}: {e}");
            }
            registry().namespaces.retain(|n| *n != name);
        }
    }
}

/// The PID in a `wbs-<pid>-…` name, when that run is over.
fn dead_run(name: &str) -> Option<u32> {
    let pid = name.strip_prefix("wbs-")?.split('-').next()?.parse().ok()?;
    (pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// Namespaces and temporary directories (in `dir`) left by an earlier run
/// of this benchmark that died without cleaning up (its PID, part of every
/// name, no longer exists).
fn remove_stale(dir: &Path) {
    for name in netns::list_named() {
        if let Some(pid) = dead_run(&name) {
            eprintln!("removing namespace {name} left by an earlier run (PID {pid} is gone)");
            let _ = netns::delete_named(&name);
        }
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && dead_run(&name).is_some() {
            eprintln!("removing {} left by an earlier run", entry.path().display());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The agent we started; stopped (SIGTERM, then SIGKILL) by its PID on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn memory(&mut self) -> Result<Memory> {
        if !alive(self.pid()) {
            bail!("the agent exited; its log:\n{}", tail_of(&self.log, 30));
        }
        Memory::of(self.pid())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.child.id();
        // Out of the registry before anything can reap it, so the registry
        // never names a PID that could be reused.
        registry().agents.retain(|p| *p != pid);
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

impl Memory {
    pub(crate) fn of(pid: u32) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{name} in /proc/{pid}/status"))
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
    pub(crate) fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
    fn hwm_mib(&self) -> f64 {
        self.hwm_kib as f64 / 1024.0
    }
}

/// `ip -n NS ARGS…` (ARGS split on spaces).
fn ip_in(ns: &str, args: &str) -> Result<()> {
    let mut all = vec!["-n", ns];
    all.extend(args.split_whitespace());
    ip(&all)
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether our child `pid` still runs (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// One test bed: node + pod + peer namespaces, a store and an agent.

/// Where the bed's proxy reads the cluster from, and the benchmark writes
/// the objects to.
enum Cluster {
    /// weft's embedded store, in the bed's directory.
    Store(Store),
    /// A kube-apiserver: written through `api`, read with `kubeconfig`.
    Kube {
        api: std::rc::Rc<kube_proxy::Api>,
        kubeconfig: PathBuf,
    },
}

struct Bed {
    // Dropped in this order: the agent first, then the namespaces, then
    // the files.
    agent: Option<Agent>,
    tag: String,
    node: NetNs,
    node_name: String,
    _namespaces: Namespaces,
    _listeners: Vec<std::thread::JoinHandle<()>>,
    cluster: Cluster,
    dir: tempfile::TempDir,
    endpoints: usize,
}

impl Bed {
    /// The namespaces, veths and listeners, and a store; no agent yet.
    fn new(tag: &str, args: &Args) -> Result<Bed> {
        Bed::build(tag, args, |dir| {
            Ok(Cluster::Store(Store::open(&dir.join("store.db"))?))
        })
    }

    /// The namespaces, veths and listeners, reading the cluster from what
    /// `cluster` makes of the bed's directory; no proxy yet.
    fn build(
        tag: &str,
        args: &Args,
        cluster: impl FnOnce(&Path) -> Result<Cluster>,
    ) -> Result<Bed> {
        let prefix = format!("wbs-{}-{tag}", std::process::id());
        let mut namespaces = Namespaces::default();
        let (node_name, peer_name, pod_name) = (
            format!("{prefix}-node"),
            format!("{prefix}-peer"),
            format!("{prefix}-pod"),
        );
        let node = namespaces.create(&node_name)?;
        namespaces.create(&peer_name)?;
        let pod = namespaces.create(&pod_name)?;
        for ns in [&node_name, &peer_name, &pod_name] {
            ip_in(ns, "link set lo up")?;
        }
        // The underlay: node eth0 <-> peer eth0. The peer takes every
        // ClusterIP as local and, listening on none, resets connections
        // that no Service rule caught.
        ip_in(
            &node_name,
            &format!("link add eth0 type veth peer name eth0 netns {peer_name}"),
        )?;
        ip_in(&node_name, &format!("addr add {NODE_IP}/24 dev eth0"))?;
        ip_in(&node_name, "link set eth0 up")?;
        ip_in(&peer_name, &format!("addr add {PEER_IP}/24 dev eth0"))?;
        ip_in(&peer_name, "link set eth0 up")?;
        ip_in(
            &peer_name,
            &format!("route add local {SERVICE_CIDR} dev lo table local"),
        )?;
        ip_in(
            &node_name,
            &format!("route add {SERVICE_CIDR} via {PEER_IP}"),
        )?;
        // The pod: 2 × endpoints addresses; the first half listen.
        ip_in(
            &node_name,
            &format!("link add vpod type veth peer name eth0 netns {pod_name}"),
        )?;
        ip_in(&node_name, &format!("addr add {POD_GATEWAY}/24 dev vpod"))?;
        ip_in(&node_name, "link set vpod up")?;
        for k in 0..2 * args.endpoints {
            ip_in(&pod_name, &format!("addr add {}/24 dev eth0", pod_ip(k)))?;
        }
        ip_in(&pod_name, "link set eth0 up")?;
        ip_in(&pod_name, &format!("route add default via {POD_GATEWAY}"))?;
        let listeners = pod.run_in(|| -> Result<Vec<TcpListener>> {
            (0..args.endpoints)
                .map(|k| Ok(TcpListener::bind((pod_ip(k), TARGET_PORT))?))
                .collect()
        })??;
        let threads = listeners
            .into_iter()
            .map(|l| {
                std::thread::spawn(move || {
                    for conn in l.incoming() {
                        drop(conn);
                    }
                })
            })
            .collect();

        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(&args.dir)
            .with_context(|| format!("creating a temporary directory in {}", args.dir.display()))?;
        registry().dirs.push(dir.path().to_path_buf());
        std::fs::write(
            dir.path().join("net-conf.json"),
            r#"{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "host-gw"}}"#,
        )?;
        let cluster = cluster(dir.path())?;
        Ok(Bed {
            agent: None,
            tag: tag.to_string(),
            node,
            node_name,
            _namespaces: namespaces,
            _listeners: threads,
            cluster,
            dir,
            endpoints: args.endpoints,
        })
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Starts `weft agent` in the node namespace as the lab does.
    fn start_agent(&mut self, weft: &Path, env: &[String]) -> Result<()> {
        let d = self.dir.path();
        let p = |name: &str| d.join(name).display().to_string();
        let mut cmd = self.node.command(weft);
        cmd.arg("agent").args(["--node", NODE]);
        match &self.cluster {
            Cluster::Store(_) => cmd.args(["--store", &p("store.db")]),
            Cluster::Kube { kubeconfig, .. } => cmd.arg("--kubeconfig").arg(kubeconfig),
        };
        cmd.args([
            "--net-conf",
            &p("net-conf.json"),
            "--iface",
            "eth0",
            "--subnet-file",
            &p("subnet.env"),
            "--cni-conf-dir",
            &p("net.d"),
            "--ipam-dir",
            &p("ipam"),
            "--host-local-dir",
            &p("ipam/cbr0"),
            "--policy-socket",
            &p("policy.sock"),
            "--health",
            "0.0.0.0:10254",
        ])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .envs(env.iter().filter_map(|kv| kv.split_once('=')));
        self.spawn(cmd)
    }

    /// Spawns the bed's proxy process, logging to [`Bed::log`].
    fn spawn(&mut self, mut cmd: Command) -> Result<()> {
        let log = File::create(self.log())?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The proxy goes when we go, whatever way we go.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        registry().agents.push(child.id());
        self.agent = Some(Agent {
            child,
            log: self.log(),
        });
        Ok(())
    }

    fn agent(&mut self) -> Result<&mut Agent> {
        self.agent.as_mut().context("no agent running")
    }

    /// Whether `key` is in the proxy's map `map` in the kernel now.
    fn nft_has(&self, map: &str, key: &str) -> bool {
        self.node
            .command("nft")
            .args([
                "get",
                "element",
                "ip",
                "weft-proxy",
                map,
                &format!("{{ {key} }}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// How long one `nft` run takes with this table in place, doing
    /// (almost) nothing: `-c` checks a one-line change without committing
    /// it, after loading the table into nft's cache as every run does.
    /// Median ms of `reps` runs: (one map element, one chain with a rule).
    fn nft_floor(&self, reps: usize) -> Result<(f64, f64)> {
        let time = |script: &str| -> Result<f64> {
            let mut v = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                let mut child = self
                    .node
                    .command("nft")
                    .args(["-c", "-f", "-"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()?;
                if let Some(mut stdin) = child.stdin.take() {
                    use std::io::Write;
                    stdin.write_all(script.as_bytes())?;
                }
                let out = child.wait_with_output()?;
                if !out.status.success() {
                    bail!("nft -c: {}", String::from_utf8_lossy(&out.stderr));
                }
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
            Ok(median(&v))
        };
        Ok((
            time("add element ip weft-proxy cluster-ips { 10.96.255.254 }\n")?,
            time("add chain ip weft-proxy wbs-probe\nadd rule ip weft-proxy wbs-probe meta l4proto tcp dnat to 10.244.1.2:8080\nadd element ip weft-proxy service-ips { 10.96.255.254 . tcp . 80 : goto wbs-probe }\n")?,
        ))
    }

    /// The agent's RSS after asking its allocator to hand free memory back
    /// (`malloc_trim(0)` called through gdb): what is live versus what
    /// glibc keeps. Changes the process, so only at the very end.
    fn trimmed_rss(&mut self) -> Result<Memory> {
        let pid = self.agent()?.pid();
        let mut gdb = Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "call (int) malloc_trim(0)",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running gdb (install it, or leave out --malloc-trim)")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while gdb.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = gdb.kill();
                let _ = gdb.wait();
                bail!("gdb did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Memory::of(pid)
    }

    /// Chains of family ip (the agent's only ip table is the proxy's).
    fn count_chains(&self) -> usize {
        self.node
            .command("nft")
            .args(["list", "chains", "ip"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.trim_start().starts_with("chain "))
                    .count()
            })
            .unwrap_or(0)
    }

    fn put_service(&self, name: &str, ip: Ipv4Addr) -> Result<()> {
        match &self.cluster {
            Cluster::Store(store) => store.put_typed(&service(name, ip)?).map(drop)?,
            Cluster::Kube { api, .. } => api.create(service(name, ip)?)?,
        }
        Ok(())
    }

    fn put_slice(&self, service: &str, endpoints: &[(Ipv4Addr, String)]) -> Result<()> {
        match &self.cluster {
            Cluster::Store(store) => store.put_typed(&slice(service, endpoints)?).map(drop)?,
            Cluster::Kube { api, .. } => api.create(slice(service, endpoints)?)?,
        }
        Ok(())
    }

    /// The listening endpoints (pod addresses 0..n).
    fn live_endpoints(&self) -> Vec<(Ipv4Addr, String)> {
        live_endpoints(self.endpoints)
    }

    /// Pod addresses nothing listens on (the connection is reset).
    fn dead_endpoints(&self) -> Vec<(Ipv4Addr, String)> {
        (self.endpoints..2 * self.endpoints)
            .map(|k| (pod_ip(k), NODE.to_string()))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The objects.

/// The pod's `per` listening addresses, as endpoints on [`NODE`].
fn live_endpoints(per: usize) -> Vec<(Ipv4Addr, String)> {
    (0..per).map(|k| (pod_ip(k), NODE.to_string())).collect()
}

fn pod_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 2 + k as u8)
}

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 2) as u8)
}

/// Change-measurement Services live in 10.96.200.0/21, clear of the table.
fn change_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 200 + (k / 250) as u8, (k % 250 + 2) as u8)
}

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Endpoint `j` of background Service `i`: unique addresses from
/// 10.244.2.2 on (100,000 of them do not fit in the /16, so the last third
/// spill into 10.245.0.0/16 — the proxy only DNATs to them), spread over
/// 100 node names (1 % on this node, as in a 100-node cluster).
fn background_endpoint(i: usize, j: usize, per: usize) -> (Ipv4Addr, String) {
    let k = i * per + j;
    let base = u32::from(Ipv4Addr::new(10, 244, 2, 0));
    let addr = base + (k / 250) as u32 * 256 + (k % 250) as u32 + 2;
    (Ipv4Addr::from(addr), format!("node-{}", k % 100 + 1))
}

fn service(name: &str, ip: Ipv4Addr) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": NAMESPACE, "name": name},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip.to_string(),
            "clusterIPs": [ip.to_string()],
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": TARGET_PORT}]
        }
    }))?)
}

fn slice(service: &str, endpoints: &[(Ipv4Addr, String)]) -> Result<EndpointSlice> {
    let eps: Vec<_> = endpoints
        .iter()
        .map(|(ip, node)| {
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node
            })
        })
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": NAMESPACE,
            "name": format!("{service}-x7k2p"),
            "labels": {"kubernetes.io/service-name": service}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": eps
    }))?)
}

/// Writes `n` Services with their slices; Service 0's endpoints are the
/// pod's listeners. Returns the seconds it took.
fn populate(bed: &Bed, n: usize, per: usize) -> Result<f64> {
    let start = Instant::now();
    let (services, slices) = table(n, per)?;
    let Cluster::Store(store) = &bed.cluster else {
        bail!("populate writes a bed's own store");
    };
    for s in &services {
        store.put_typed(s)?;
    }
    for s in &slices {
        store.put_typed(s)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// The large table: `n` Services with their slices; Service 0's endpoints
/// are the pod's listeners.
fn table(n: usize, per: usize) -> Result<(Vec<Service>, Vec<EndpointSlice>)> {
    let services = (0..n)
        .map(|i| service(&service_name(i), cluster_ip(i)))
        .collect::<Result<_>>()?;
    let slices = (0..n)
        .map(|i| {
            let eps: Vec<_> = if i == 0 {
                live_endpoints(per)
            } else {
                (0..per).map(|j| background_endpoint(i, j, per)).collect()
            };
            slice(&service_name(i), &eps)
        })
        .collect::<Result<_>>()?;
    Ok((services, slices))
}

// ---------------------------------------------------------------------------
// Probing.

#[derive(Debug, PartialEq)]
enum Probe {
    Connected,
    Refused,
    Other(ErrorKind),
}

/// One fresh TCP connect from the calling thread's namespace.
fn probe(target: SocketAddr) -> Probe {
    match TcpStream::connect_timeout(&target, PROBE_TIMEOUT) {
        Ok(_) => Probe::Connected,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Probe::Refused,
        Err(e) => Probe::Other(e.kind()),
    }
}

/// How a target was reached.
struct Reached {
    /// From the start to the end of the successful connect.
    at: Duration,
    /// The successful connect alone.
    connect_ms: f64,
    refused: usize,
    /// Attempts that failed otherwise (timeout, unreachable).
    other: usize,
}

/// Polls `target` every millisecond until a connection succeeds.
/// `on_poll` runs between attempts.
fn wait_connected(
    target: SocketAddr,
    start: Instant,
    limit: Duration,
    mut on_poll: impl FnMut() -> Result<()>,
) -> Result<Reached> {
    let (mut refused, mut other) = (0, 0);
    loop {
        let attempt = Instant::now();
        match probe(target) {
            Probe::Connected => {
                return Ok(Reached {
                    at: start.elapsed(),
                    connect_ms: attempt.elapsed().as_secs_f64() * 1e3,
                    refused,
                    other,
                })
            }
            Probe::Refused => refused += 1,
            Probe::Other(_) => other += 1,
        }
        on_poll()?;
        if start.elapsed() > limit {
            bail!("{target} not reachable within {limit:?} ({refused} attempts refused, {other} failed otherwise)");
        }
        if let Some(rest) = POLL.checked_sub(attempt.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// What the agent does while we wait, sampled on every poll: its log
/// lines, its `nft` children (first and last seen) and its RSS.
struct Watch {
    pid: u32,
    origin: Instant,
    tail: LogTail,
    /// (ms since origin when seen, line)
    lines: Vec<(f64, String)>,
    /// The proxy's child PID → (first seen, last seen), ms since origin.
    children: BTreeMap<u32, (f64, f64)>,
    busy: bool,
    /// (ms since origin, VmRSS KiB), about every 100 ms.
    rss: Vec<(f64, u64)>,
}

impl Watch {
    /// Watches from `origin`, ignoring log lines written before now.
    fn new(pid: u32, log: PathBuf, origin: Instant, from_start: bool) -> Watch {
        let mut tail = LogTail::new(log);
        if !from_start {
            tail.skip_to_end();
        }
        Watch {
            pid,
            origin,
            tail,
            lines: Vec::new(),
            children: BTreeMap::new(),
            busy: false,
            rss: Vec::new(),
        }
    }

    fn ms(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1e3
    }

    fn sample(&mut self) -> Result<()> {
        let now = self.ms();
        for l in self.tail.lines() {
            if l.contains(" WARN ") || l.contains(" ERROR ") {
                eprintln!("  agent: {l}");
            }
            self.lines.push((now, l));
        }
        self.busy = false;
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid));
        let Ok(tasks) = tasks else {
            bail!("the agent (PID {}) is gone", self.pid);
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            // Runs are recorded for the Service proxy's thread only (and the
            // shard threads it spawns, which inherit its name): the lease
            // loop runs `nft` for the masquerade table too.
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                self.busy = true;
                if comm.trim() == "proxy" {
                    self.children.entry(child).or_insert((now, now)).1 = now;
                }
            }
        }
        if self.rss.last().is_none_or(|(t, _)| now - t >= 100.0) {
            if !alive(self.pid) {
                bail!("the agent (PID {}) exited", self.pid);
            }
            if let Ok(m) = Memory::of(self.pid) {
                self.rss.push((now, m.rss_kib));
            }
        }
        Ok(())
    }

    /// Samples until no child has run for `quiet`.
    fn wait_idle(&mut self, quiet: Duration, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let mut since = Instant::now();
        loop {
            self.sample()?;
            if self.busy {
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("the agent did not go idle within {limit:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Samples until a line containing `text` appeared; when it was seen.
    fn wait_line(&mut self, text: &str, limit: Duration) -> Result<f64> {
        let start = Instant::now();
        loop {
            if let Some((t, _)) = self.lines.iter().find(|(_, l)| l.contains(text)) {
                return Ok(*t);
            }
            if start.elapsed() > limit {
                bail!("no \"{text}\" in the agent's log within {limit:?}");
            }
            self.sample()?;
            std::thread::sleep(POLL);
        }
    }

    fn line(&self, text: &str) -> Option<&(f64, String)> {
        self.lines.iter().find(|(_, l)| l.contains(text))
    }

    /// `nft` runs seen: (start, end) in ms, by start.
    fn runs(&self) -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = self.children.values().copied().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// Follows the agent's log.
struct LogTail {
    path: PathBuf,
    offset: u64,
}

impl LogTail {
    fn new(path: PathBuf) -> Self {
        LogTail { path, offset: 0 }
    }

    fn skip_to_end(&mut self) {
        self.lines();
    }

    /// Complete lines written since the last call.
    fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = File::open(&self.path) else {
            return Vec::new();
        };
        let mut buf = String::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_string(&mut buf).is_err() {
            return Vec::new();
        }
        let Some(end) = buf.rfind('\n') else {
            return Vec::new();
        };
        self.offset += end as u64 + 1;
        buf[..end].lines().map(strip_ansi).collect()
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name=value` of a tracing line.
fn field(line: &str, name: &str) -> Option<f64> {
    let at = line.find(&format!(" {name}="))?;
    line[at + name.len() + 2..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Statistics.

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let v = sorted(v.to_vec());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let v = sorted(v.to_vec());
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(f64::NAN, f64::max)
}

/// One change scenario's results.
#[derive(Default)]
struct Change {
    e2e_ms: Vec<f64>,
    write_ms: Vec<f64>,
    /// "Services synced" lines (the proxy's passes) and their ms in total.
    passes: Vec<f64>,
    agent_ms: Vec<f64>,
    /// `nft` processes, when the first started, and their summed lifetime.
    nft_runs: Vec<f64>,
    first_nft_ms: Vec<f64>,
    nft_ms: Vec<f64>,
    /// How long the last `nft` lived on after the change took effect.
    nft_after_ms: Vec<f64>,
    /// The successful connect alone, and the failed attempts before it.
    connect_ms: Vec<f64>,
    refused: usize,
    other: usize,
}

impl Change {
    fn push(&mut self, reached: &Reached, write: f64, w: &Watch) {
        let e2e = reached.at.as_secs_f64() * 1e3;
        self.connect_ms.push(reached.connect_ms);
        self.refused += reached.refused;
        self.other += reached.other;
        let synced: Vec<&String> = w
            .lines
            .iter()
            .map(|(_, l)| l)
            .filter(|l| l.contains("Services synced"))
            .collect();
        let runs = w.runs();
        self.e2e_ms.push(e2e);
        self.write_ms.push(write);
        self.passes.push(synced.len() as f64);
        self.agent_ms
            .push(synced.iter().filter_map(|l| field(l, "ms")).sum());
        self.nft_runs.push(runs.len() as f64);
        if let Some((first, _)) = runs.first() {
            self.first_nft_ms.push(*first);
        }
        self.nft_ms.push(runs.iter().map(|(a, b)| b - a).sum());
        if let Some(end) = runs.iter().map(|r| r.1).reduce(f64::max) {
            self.nft_after_ms.push(end - e2e);
        }
    }

    /// Median, max and every value.
    fn headline(&self) -> String {
        format!(
            "median {:.1} ms, max {:.1} ms — all: {}",
            median(&self.e2e_ms),
            max(&self.e2e_ms),
            self.e2e_ms
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }

    /// [`Change::headline`], how long the writes themselves took and the
    /// failed attempts, in one line.
    fn brief(&self) -> String {
        format!(
            "{}; the writes took median {:.1} ms; failed attempts before success: {} refused, {} otherwise",
            self.headline(),
            median(&self.write_ms),
            self.refused,
            self.other
        )
    }

    fn summary(&self) -> String {
        format!(
            "{}\n     where it goes (medians): store write(s) {:.1} ms; first `nft` seen {:.1} ms after the write began; {} `nft` run(s), alive {:.1} ms in total (the agent's \"Services synced\": {} pass(es), {:.1} ms); the last `nft` exited {:.1} ms after the change took effect; the successful connect took {:.2} ms; failed attempts before it: {} refused, {} otherwise",
            self.headline(),
            median(&self.write_ms),
            median(&self.first_nft_ms),
            median(&self.nft_runs),
            median(&self.nft_ms),
            median(&self.passes),
            median(&self.agent_ms),
            median(&self.nft_after_ms),
            median(&self.connect_ms),
            self.refused,
            self.other,
        )
    }
}

// ---------------------------------------------------------------------------
// The run.

struct FullSync {
    services: usize,
    e2e_s: f64,
    log_s: f64,
    agent_ms: f64,
    chains: usize,
    lease_s: Option<f64>,
    runs: Vec<(f64, f64)>,
    rss: Vec<(f64, u64)>,
}

impl FullSync {
    fn describe(&self) -> String {
        let mut out = format!(
            "agent start → first connection through a Service: {:.3} s; → \"Service table fully synced\" logged: {:.3} s (the proxier's own report: {:.0} ms for {} Services; {} chains in the table)",
            self.e2e_s, self.log_s, self.agent_ms, self.services, self.chains
        );
        let first_nft = self.runs.first().map(|r| r.0 / 1e3);
        if let (Some(lease), Some(first)) = (self.lease_s, first_nft) {
            out += &format!(
                "\n  where it goes: process start → subnet leased {lease:.3} s; → first `nft` (the proxy lists the store, decodes and plans) {:.3} s; `nft` runs (start–end, s):",
                first - lease
            );
            let span = |r: &[(f64, f64)]| {
                r.iter()
                    .map(|(a, b)| format!("{:.3}–{:.3}", a / 1e3, b / 1e3))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let n = self.runs.len();
            if n >= 3 {
                out += &format!(
                    " base table {}; chains in {} parallel shard(s) {}; maps and sets {}",
                    span(&self.runs[..1]),
                    n - 2,
                    span(&self.runs[1..n - 1]),
                    span(&self.runs[n - 1..])
                );
            } else {
                out += &format!(" {}", span(&self.runs));
            }
        }
        if !self.rss.is_empty() {
            out += "\n  agent VmRSS (s: MiB):";
            let step = (self.rss.len() / 24).max(1);
            for (t, kib) in self.rss.iter().step_by(step) {
                out += &format!(" {:.1}: {:.0}", t / 1e3, *kib as f64 / 1024.0);
            }
        }
        out
    }
}

/// Starts the bed's agent over a populated store and waits for Service 0
/// to answer through its ClusterIP and for the full-sync log line.
fn full_sync(bed: &mut Bed, weft: &Path, env: &[String]) -> Result<FullSync> {
    let (mut w, e2e) = spawn_until_connected(bed, |b| b.start_agent(weft, env))?;
    let log_ms = w.wait_line("Service table fully synced", Duration::from_secs(60))?;
    w.wait_idle(Duration::from_millis(100), Duration::from_secs(60))?;
    let line = w
        .line("Service table fully synced")
        .map(|l| l.1.clone())
        .unwrap_or_default();
    Ok(FullSync {
        services: field(&line, "services").unwrap_or(0.0) as usize,
        e2e_s: e2e,
        log_s: log_ms / 1e3,
        agent_ms: field(&line, "ms").unwrap_or(f64::NAN),
        chains: bed.count_chains(),
        lease_s: w.line("leased subnet").map(|l| l.0 / 1e3),
        runs: w.runs(),
        rss: w.rss.clone(),
    })
}

/// Starts the bed's proxy with `start` and polls Service 0's ClusterIP
/// until a connection succeeds: the proxy watched from its spawn, and the
/// seconds from the spawn to that connection.
fn spawn_until_connected(
    bed: &mut Bed,
    start: impl FnOnce(&mut Bed) -> Result<()>,
) -> Result<(Watch, f64)> {
    let target = SocketAddr::from((cluster_ip(0), 80));
    let t0 = Instant::now();
    start(bed)?;
    let pid = bed.agent()?.pid();
    let mut w = Watch::new(pid, bed.log(), t0, true);
    let reached = bed
        .node
        .run_in(|| wait_connected(target, t0, Duration::from_secs(300), || w.sample()))?;
    match reached {
        Ok(r) => Ok((w, r.at.as_secs_f64())),
        Err(e) => bail!(
            "{e:#}\nthe proxy's log:\n{}\n(look at the tables with: ip netns exec {} nft list tables)",
            tail_of(&bed.log(), 30),
            bed.node_name
        ),
    }
}

struct Restart {
    log_s: f64,
    agent_ms: f64,
    connects_ok: usize,
    connects_failed: usize,
    memory: Memory,
}

/// Stops the bed's agent and starts a new one over the table it left,
/// connecting to Service 0 every few milliseconds until the new agent has
/// logged its full sync.
fn restart(bed: &mut Bed, weft: &Path, env: &[String]) -> Result<Restart> {
    let target = SocketAddr::from((cluster_ip(0), 80));
    bed.agent = None;
    let start = Instant::now();
    bed.start_agent(weft, env)?;
    let pid = bed.agent()?.pid();
    let mut w = Watch::new(pid, bed.log(), start, true);
    let (mut ok, mut failed) = (0, 0);
    bed.node.run_in(|| -> Result<()> {
        while w.line("Service table fully synced").is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the restarted agent did not sync within 60 s; its log:\n{}",
                    tail_of(&bed.log(), 30)
                );
            }
            match probe(target) {
                Probe::Connected => ok += 1,
                _ => failed += 1,
            }
            w.sample()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })??;
    w.wait_idle(Duration::from_millis(100), Duration::from_secs(60))?;
    let (at, line) = w
        .line("Service table fully synced")
        .cloned()
        .unwrap_or_default();
    Ok(Restart {
        log_s: at / 1e3,
        agent_ms: field(&line, "ms").unwrap_or(f64::NAN),
        connects_ok: ok,
        connects_failed: failed,
        memory: bed.agent()?.memory()?,
    })
}

/// One measured change: `write` runs at t0, then the ClusterIP is polled
/// until a connection succeeds, then the agent is left to go idle.
fn measure(
    bed: &Bed,
    pid: u32,
    target: SocketAddr,
    into: &mut Change,
    write: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let t0 = Instant::now();
    let mut w = Watch::new(pid, bed.log(), t0, false);
    write()?;
    let wrote = t0.elapsed().as_secs_f64() * 1e3;
    let took = bed
        .node
        .run_in(|| wait_connected(target, t0, Duration::from_secs(30), || w.sample()))??;
    w.wait_idle(Duration::from_millis(100), Duration::from_secs(30))?;
    into.push(&took, wrote, &w);
    Ok(())
}

/// Waits for the agent to log a pass and go idle after `write`; the ms
/// from the write to the pass's log line.
fn settle(bed: &Bed, pid: u32, write: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t0 = Instant::now();
    let mut w = Watch::new(pid, bed.log(), t0, false);
    write()?;
    let seen = w.wait_line("Services synced", Duration::from_secs(30))?;
    w.wait_idle(Duration::from_millis(100), Duration::from_secs(30))?;
    Ok(seen)
}

/// In which order a new Service's two objects are written.
#[derive(Clone, Copy)]
enum Order {
    ServiceFirst,
    SliceFirst,
}

/// One measured change: a new Service `name` at `ip` and its EndpointSlice
/// with the listening endpoints, written back to back in `order`, after
/// the proxy went idle.
fn new_service(
    b: &Bed,
    pid: u32,
    name: &str,
    ip: Ipv4Addr,
    order: Order,
    into: &mut Change,
) -> Result<()> {
    let live = b.live_endpoints();
    idle(b, pid)?;
    measure(b, pid, SocketAddr::from((ip, 80)), into, || match order {
        Order::ServiceFirst => {
            b.put_service(name, ip)?;
            b.put_slice(name, &live)
        }
        Order::SliceFirst => {
            b.put_slice(name, &live)?;
            b.put_service(name, ip)
        }
    })
}

fn idle(bed: &Bed, pid: u32) -> Result<()> {
    idle_for(bed, pid, Duration::from_millis(100))
}

/// Waits until the proxy `pid` has run no child (`nft`) for `quiet`.
fn idle_for(bed: &Bed, pid: u32, quiet: Duration) -> Result<()> {
    Watch::new(pid, bed.log(), Instant::now(), false).wait_idle(quiet, Duration::from_secs(60))
}

struct Latency {
    service_us: Vec<f64>,
    direct_us: Vec<f64>,
}

/// `n` sequential fresh connects to `target` from the bed's node; µs each.
fn connects(bed: &Bed, target: SocketAddr, n: usize, out: &mut Vec<f64>) -> Result<()> {
    bed.node.run_in(|| -> Result<()> {
        for _ in 0..n {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&target, Duration::from_secs(1))
                .with_context(|| format!("connecting to {target}"))?;
            out.push(t.elapsed().as_secs_f64() * 1e6);
            drop(s);
        }
        Ok(())
    })?
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ratio_to(ours: f64, reference: f64) -> String {
    format!("{:.4}×", ours / reference)
}

fn ratio_range(ours: f64, (lo, hi): (f64, f64)) -> String {
    format!("{:.4}–{:.4}×", ours / hi, ours / lo)
}

/// Checks the arguments both modes share and prepares the run (cleanup on
/// any exit, leftovers of dead runs removed); the weft binary's path.
fn prepare(args: &Args) -> Result<PathBuf> {
    if !args.weft.is_file() {
        bail!(
            "{} not found; run `cargo build --release` first (or pass --weft)",
            args.weft.display()
        );
    }
    if args.endpoints == 0 || args.endpoints > 100 {
        bail!("--endpoints must be 1..=100");
    }
    if !(1..=50_000).contains(&args.services) || !(1..=args.services).contains(&args.small) {
        bail!("--services must be 1..=50000 (ClusterIPs from 10.96.0.0/18) and --small 1..=--services");
    }
    let weft = std::fs::canonicalize(&args.weft)?;
    install_cleanup()?;
    remove_stale(&args.dir);
    Ok(weft)
}

pub fn run(args: Args) -> Result<()> {
    if args.kube {
        return kube_proxy::run(args);
    }
    let weft = prepare(&args)?;
    let n = args.services;
    let per = args.endpoints;

    println!("# weft Service proxy: {n} Services × {per} endpoints");
    println!("load average at start: {}", loadavg());
    let mut big = Bed::new("big", &args)?;
    let wrote = populate(&big, n, per)?;
    println!(
        "store populated: {n} Services + {n} EndpointSlices in {wrote:.1} s ({:.2} ms per object; one SQLite transaction each, outside every measured window)",
        wrote * 1e3 / (2 * n) as f64
    );

    // 1. Full sync from an empty table.
    let fs = full_sync(&mut big, &weft, &args.agent_env)?;
    println!("\n## full sync\n{}", fs.describe());
    let at_sync = big.agent()?.memory()?;
    std::thread::sleep(Duration::from_secs(2));
    let settled = big.agent()?.memory()?;
    println!(
        "agent (PID {}) memory: at the sync line VmRSS {:.1} MiB; 2 s later VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        big.agent()?.pid(),
        at_sync.rss_mib(),
        settled.rss_mib(),
        settled.hwm_mib()
    );
    if !big.nft_has("service-ips", &format!("{} . tcp . 80", cluster_ip(n - 1))) {
        bail!("the last Service's ClusterIP is not in service-ips after the full sync");
    }

    // 2. One change, both orders, and an endpoint change.
    println!("\n## one change ({} repetitions each)", args.reps);
    let pid = big.agent()?.pid();
    let mut next_ip = 0usize;
    let mut fresh = |prefix: &str, k: usize| {
        next_ip += 1;
        let ip = change_ip(next_ip);
        (format!("chg-{prefix}-{k}"), ip, SocketAddr::from((ip, 80)))
    };
    let (mut svc_first, mut slice_first, mut svc_then, mut slice_then, mut ep_change) = (
        Change::default(),
        Change::default(),
        Change::default(),
        Change::default(),
        Change::default(),
    );
    let mut svc_to_reject = Vec::new();
    let live = big.live_endpoints();
    let dead = big.dead_endpoints();
    let b = &big;
    for k in 0..args.reps {
        // a) Service, then its slice at once.
        let (name, ip, _) = fresh("a", k);
        new_service(b, pid, &name, ip, Order::ServiceFirst, &mut svc_first)?;

        // b) EndpointSlice, then its Service at once.
        let (name, ip, _) = fresh("b", k);
        new_service(b, pid, &name, ip, Order::SliceFirst, &mut slice_first)?;

        // c) The Service alone until the proxy rejects for it, then the slice.
        let (name, ip, target) = fresh("c", k);
        idle(b, pid)?;
        svc_to_reject.push(settle(b, pid, || b.put_service(&name, ip))?);
        if !b.nft_has("no-endpoint-services", &format!("{ip} . tcp . 80")) {
            bail!("{name}: a Service without endpoints should be in no-endpoint-services");
        }
        measure(b, pid, target, &mut svc_then, || b.put_slice(&name, &live))?;

        // d) The slice alone (nothing to program), then its Service.
        let (name, ip, target) = fresh("d", k);
        idle(b, pid)?;
        b.put_slice(&name, &live)?;
        std::thread::sleep(Duration::from_millis(200));
        idle(b, pid)?;
        measure(b, pid, target, &mut slice_then, || b.put_service(&name, ip))?;

        // e) All endpoints of an existing Service replaced (a rollout):
        // from endpoints that reset connections to ones that accept.
        let (name, ip, target) = fresh("e", k);
        idle(b, pid)?;
        settle(b, pid, || {
            b.put_service(&name, ip)?;
            b.put_slice(&name, &dead)
        })?;
        if !b.nft_has("service-ips", &format!("{ip} . tcp . 80")) {
            bail!("{name}: not in service-ips");
        }
        if b.node.run_in(|| probe(target))? != Probe::Refused {
            bail!("{target}: the old endpoints should refuse connections");
        }
        measure(b, pid, target, &mut ep_change, || b.put_slice(&name, &live))?;
    }
    println!(
        "a) new Service, then its EndpointSlice at once: {}",
        svc_first.summary()
    );
    println!(
        "b) new EndpointSlice, then its Service at once: {}",
        slice_first.summary()
    );
    println!(
        "c) Service first (in effect, rejecting: its \"Services synced\" came median {:.1} ms, max {:.1} ms after its write), then its EndpointSlice, from the slice's write: {}",
        median(&svc_to_reject),
        max(&svc_to_reject),
        svc_then.summary()
    );
    println!(
        "d) EndpointSlice first, its Service written 200 ms later, from the Service's write: {}",
        slice_then.summary()
    );
    println!(
        "e) endpoint change of an existing Service (all {per} endpoints replaced): {}",
        ep_change.summary()
    );
    let after_changes = big.agent()?.memory()?;
    println!(
        "agent memory after the changes: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        after_changes.rss_mib(),
        after_changes.hwm_mib()
    );
    idle(&big, pid)?;
    let floor_big = big.nft_floor(7)?;

    if args.inspect > 0 {
        println!(
            "inspect: the agent is PID {}, its table: ip netns exec {} nft list table ip weft-proxy (pausing {} s)",
            big.agent()?.pid(),
            big.node_name,
            args.inspect
        );
        std::thread::sleep(Duration::from_secs(args.inspect));
    }

    // 3. First-connection latency: a small table next to the large one.
    println!("\n## first-connection latency");
    let mut small = Bed::new("small", &args)?;
    populate(&small, args.small, per)?;
    let small_fs = full_sync(&mut small, &weft, &args.agent_env)?;
    println!(
        "small table: {} Services fully synced {:.3} s after agent start (agent-reported {:.1} ms)",
        small_fs.services, small_fs.e2e_s, small_fs.agent_ms
    );
    let small_mem = small.agent()?.memory()?;
    let svc = SocketAddr::from((cluster_ip(0), 80));
    let direct = SocketAddr::from((pod_ip(0), TARGET_PORT));
    let mut lat_big = Latency {
        service_us: Vec::new(),
        direct_us: Vec::new(),
    };
    let mut lat_small = Latency {
        service_us: Vec::new(),
        direct_us: Vec::new(),
    };
    // Warm-up, then interleaved batches so both see the same machine noise.
    let mut scratch = Vec::new();
    connects(&big, svc, 10, &mut scratch)?;
    connects(&small, svc, 10, &mut scratch)?;
    let batch = 10;
    let mut done = 0;
    while done < args.connects {
        let b = batch.min(args.connects - done);
        connects(&small, svc, b, &mut lat_small.service_us)?;
        connects(&big, svc, b, &mut lat_big.service_us)?;
        connects(&small, direct, b, &mut lat_small.direct_us)?;
        connects(&big, direct, b, &mut lat_big.direct_us)?;
        done += b;
    }
    let row = |what: &str, v: &[f64]| {
        println!(
            "{what:<44} median {:>6.1} µs, p90 {:>6.1} µs, max {:>7.1} µs",
            median(v),
            percentile(v, 90.0),
            max(v)
        )
    };
    row(
        &format!("ClusterIP, {} Services:", args.small),
        &lat_small.service_us,
    );
    row(&format!("ClusterIP, {n} Services:"), &lat_big.service_us);
    row(
        &format!("endpoint directly (node with {} Services):", args.small),
        &lat_small.direct_us,
    );
    row(
        &format!("endpoint directly (node with {n} Services):"),
        &lat_big.direct_us,
    );
    let lat_ratio = median(&lat_big.service_us) / median(&lat_small.service_us);
    let p90_ratio = percentile(&lat_big.service_us, 90.0) / percentile(&lat_small.service_us, 90.0);
    println!(
        "ratio {n} / {} Services: median {lat_ratio:.3}×, p90 {p90_ratio:.3}× (goal ≤ 1.2×)",
        args.small
    );
    println!(
        "small table's agent: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        small_mem.rss_mib(),
        small_mem.hwm_mib()
    );

    let floor_small = small.nft_floor(7)?;
    println!(
        "\n## one `nft -c -f` run doing nothing much (median of 7; every proxy pass pays this)\none map element: {:.1} ms with {n} Services, {:.1} ms with {}; one chain + rule + element: {:.1} ms / {:.1} ms",
        floor_big.0, floor_small.0, args.small, floor_big.1, floor_small.1
    );
    let trimmed = if args.malloc_trim {
        let m = big.trimmed_rss()?;
        println!(
            "\n## the agent's memory, live versus kept by the allocator\nafter malloc_trim(0) (gdb): VmRSS {:.1} MiB (was {:.1} MiB)",
            m.rss_mib(),
            after_changes.rss_mib()
        );
        Some(m)
    } else {
        None
    };
    // Last, as it replaces the agent: a restart over the full table (the
    // maps flushed and refilled in one transaction) while a client keeps
    // connecting.
    let rs = restart(&mut big, &weft, &args.agent_env)?;
    println!(
        "\n## agent restart over the full table\nagent start → \"fully synced\" logged: {:.3} s (the proxier's own report: {:.0} ms); connects to Service 0 meanwhile: {} ok, {} failed; VmRSS after {:.1} MiB, VmHWM {:.1} MiB",
        rs.log_s, rs.agent_ms, rs.connects_ok, rs.connects_failed, rs.memory.rss_mib(), rs.memory.hwm_mib()
    );
    println!("load average at the end: {}", loadavg());

    // 4. The table.
    let goal_rss_mib = 60e6 / 1048576.0;
    let ms = |c: &Change| format!("{:.1} / {:.1}", median(&c.e2e_ms), max(&c.e2e_ms));
    let med_s = |c: &Change| median(&c.e2e_ms) / 1e3;
    println!("\n## summary (markdown)\n");
    println!(
        "| metric | weft | kube-proxy v1.36.2 nftables (reference) | weft / kube-proxy | goal |"
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| full sync from an empty table: agent start → first connection through a Service (s) | **{:.2}** | 12.5 | {} | ≤ 2 s |",
        fs.e2e_s,
        ratio_to(fs.e2e_s, REF_FULL_SYNC_S)
    );
    println!(
        "| … agent start → \"fully synced\" logged (s) / the proxier's own report (ms) | {:.2} / {:.0} | | | |",
        fs.log_s, fs.agent_ms
    );
    println!(
        "| new Service, then its EndpointSlice at once: median / max (ms) | **{}** | 3,600–4,100 | {} | ≤ 50 ms |",
        ms(&svc_first),
        ratio_range(med_s(&svc_first), REF_CHANGE_S)
    );
    println!(
        "| new EndpointSlice, then its Service at once (ms) | **{}** | 3,600–4,100 | {} | ≤ 50 ms |",
        ms(&slice_first),
        ratio_range(med_s(&slice_first), REF_CHANGE_S)
    );
    println!(
        "| Service programmed (rejecting) first, then its EndpointSlice: from the slice's write (ms) | **{}** | 8,400 | {} | ≤ 50 ms |",
        ms(&svc_then),
        ratio_to(med_s(&svc_then), REF_SERVICE_BEFORE_SLICE_S)
    );
    println!(
        "| EndpointSlice 200 ms before its Service: from the Service's write (ms) | **{}** | 3,600–4,100 | {} | ≤ 50 ms |",
        ms(&slice_then),
        ratio_range(med_s(&slice_then), REF_CHANGE_S)
    );
    println!(
        "| endpoint change of an existing Service (all endpoints replaced) (ms) | **{}** | | | ≤ 50 ms |",
        ms(&ep_change)
    );
    println!(
        "| agent RSS after the full sync, VmRSS / VmHWM (MiB) | **{:.1}** / {:.1} | 277 | {} | ≤ 60 MB ({goal_rss_mib:.1} MiB) |",
        settled.rss_mib(),
        settled.hwm_mib(),
        ratio_to(settled.rss_mib(), REF_RSS_MIB.0)
    );
    println!(
        "| agent RSS after the changes, VmRSS / VmHWM (MiB) | **{:.1}** / {:.1} | 516 | {} | ≤ 60 MB |",
        after_changes.rss_mib(),
        after_changes.hwm_mib(),
        ratio_to(after_changes.rss_mib(), REF_RSS_MIB.1)
    );
    println!(
        "| agent restart over the full table → \"fully synced\" (s); connects to a Service meanwhile ok / failed | {:.2}; {} / {} | | | |",
        rs.log_s, rs.connects_ok, rs.connects_failed
    );
    println!(
        "| first connection via ClusterIP, {} Services: median / p90 (µs) | {:.1} / {:.1} | | | |",
        args.small,
        median(&lat_small.service_us),
        percentile(&lat_small.service_us, 90.0)
    );
    println!(
        "| first connection via ClusterIP, {n} Services: median / p90 (µs) | {:.1} / {:.1} | | | |",
        median(&lat_big.service_us),
        percentile(&lat_big.service_us, 90.0)
    );
    println!(
        "| … ratio {n} / {} Services, median (p90) | **{lat_ratio:.2}×** ({p90_ratio:.2}×) | | | ≤ 1.2× |",
        args.small
    );
    println!(
        "| connection straight to the endpoint, {} / {n} Services: median (µs) | {:.1} / {:.1} | | | |",
        args.small,
        median(&lat_small.direct_us),
        median(&lat_big.direct_us)
    );

    if let Some(m) = trimmed {
        println!(
            "| … after malloc_trim(0): what the agent really holds (MiB) | {:.1} | | | |",
            m.rss_mib()
        );
    }
    println!(
        "| one near-empty `nft -c -f` run (element / chain+rule), {} vs {n} Services (ms) | {:.0} / {:.0} vs {:.0} / {:.0} | | | |",
        args.small, floor_small.0, floor_small.1, floor_big.0, floor_big.1
    );

    if let Some(keep) = &args.keep_logs {
        keep_logs(keep, &[&big, &small])?;
    }
    Ok(())
}

/// Copies the beds' proxy logs into `keep`.
fn keep_logs(keep: &Path, beds: &[&Bed]) -> Result<()> {
    std::fs::create_dir_all(keep)?;
    for bed in beds {
        let to = keep.join(format!("wbs-{}-{}-agent.log", std::process::id(), bed.tag));
        std::fs::copy(bed.log(), &to)?;
        println!("\nproxy log kept: {}", to.display());
    }
    Ok(())
}
