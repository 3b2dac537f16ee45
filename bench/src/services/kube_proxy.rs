//! `weft-bench services --kube`: weft's agent and kube-proxy v1.36.3
//! (nftables mode) side by side in one run, both reading the same Services
//! and EndpointSlices from one real kube-apiserver (etcd and kube-apiserver
//! from the peers, started by [`weft_lab::control_plane`]).
//!
//! Layout: the control plane's namespace (`wbs-<pid>-cp`) carries the API
//! address 198.19.0.1 on its loopback; each proxy gets a bed as in the
//! store mode (node, peer, pod namespaces) plus one veth pair, node `api0`
//! ↔ `api-<tag>` in the control plane's namespace, with /32 addresses and
//! a host route each way. Nothing is routed anywhere else.
//!
//! The proxies take turns (`--first` says which goes first): one is
//! started, measured and stopped before the other starts, so neither
//! competes for the CPU during the other's timed windows; the change
//! objects a turn created are deleted before the next turn, so both full
//! syncs read the same objects. Per proxy:
//!
//! - **full sync**: spawn → first successful connection to Service 0's
//!   ClusterIP through that proxy;
//! - **one change** in both arrival orders: a new Service and its slice
//!   written back to back through the API → first successful connection,
//!   each written after the proxy ran no `nft` for 1.5 s (kube-proxy's
//!   `--min-sync-period` is 1 s: a change sooner after its last sync would
//!   measure that wait);
//! - **memory**: the proxy process's VmRSS / VmHWM after the full sync and
//!   after the changes;
//! - **the API server's share**: the CPU time kube-apiserver and etcd
//!   spend in each window (utime + stime from /proc), and how long a plain
//!   list of all Services and all EndpointSlices takes from a node's
//!   namespace (curl, JSON and protobuf, the proxies' label selector).
//!
//! kube-proxy runs through `ip netns exec` in its node's namespace with
//! `--conntrack-max-per-core=0` and zero conntrack timeouts, so it writes
//! no conntrack sysctl; the run checks that the host's `/proc/sys/net` and
//! nf_conntrack's module parameters read the same before and after.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use weft_datapath::{netns, NetNs};
use weft_lab::control_plane::{self, ControlPlane, KUBERNETES_VERSION};

use super::{
    change_ip, ip_in, max, median, new_service, registry, spawn_until_connected, table, Args, Bed,
    Change, Cluster, Memory, Order, NAMESPACE, NODE,
};

/// Where the apiserver answers the nodes (on its namespace's loopback).
const API_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// How long a proxy has run no `nft` before each change is written.
const QUIET: Duration = Duration::from_millis(1500);
/// The label selector both proxies list and watch with.
const PROXY_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum First {
    Weft,
    KubeProxy,
}

/// One of the two proxies and its bed's particulars.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Weft,
    KubeProxy,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Weft => "weft agent",
            Proxy::KubeProxy => "kube-proxy",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Proxy::Weft => "weft",
            Proxy::KubeProxy => "kp",
        }
    }
    /// The bed's Node name (weft's agent runs as [`NODE`], whose pod the
    /// benchmark's endpoints are on).
    fn node(self) -> &'static str {
        match self {
            Proxy::Weft => NODE,
            Proxy::KubeProxy => "node-kp",
        }
    }
    fn pod_cidr(self) -> &'static str {
        match self {
            Proxy::Weft => "10.244.1.0/24",
            Proxy::KubeProxy => "10.244.250.0/24",
        }
    }
    /// Log lines that mark the full sync's steps: (what, text in the line).
    fn milestones(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Proxy::Weft => &[
                ("subnet leased (Node read)", "leased subnet"),
                (
                    "\"Service table fully synced\" (the proxier's own report)",
                    "Service table fully synced",
                ),
            ],
            Proxy::KubeProxy => &[
                (
                    "Services listed",
                    "\"Caches populated\" type=\"*v1.Service\"",
                ),
                (
                    "EndpointSlices listed",
                    "\"Caches populated\" type=\"*v1.EndpointSlice\"",
                ),
                (
                    "IPv4 sync started",
                    "\"Syncing nftables rules\" ipFamily=\"IPv4\" fullSync=true",
                ),
                (
                    "IPv4 sync complete",
                    "\"SyncProxyRules complete\" ipFamily=\"IPv4\"",
                ),
            ],
        }
    }

    /// The node's address on its link to the API server.
    fn api_link_ip(self) -> Ipv4Addr {
        match self {
            Proxy::Weft => Ipv4Addr::new(198, 19, 1, 2),
            Proxy::KubeProxy => Ipv4Addr::new(198, 19, 2, 2),
        }
    }
}

// ---------------------------------------------------------------------------
// The control plane, cleaned up also on a panic or a signal.

/// The control plane, its namespace and PIDs in the run's registry while
/// it runs (the emergency cleanup kills them by PID), out of it before the
/// servers are reaped.
struct Servers(Option<ControlPlane>);

impl Servers {
    fn start(dir: &Path) -> Result<(Servers, Duration)> {
        let name = format!("wbs-{}-cp", std::process::id());
        registry().namespaces.push(name.clone());
        let mut config = control_plane::Config::new(name);
        config.bind = Ipv4Addr::UNSPECIFIED;
        config.serving_addresses = vec![API_IP];
        config.die_with_thread = true;
        config.parent_dir = dir.to_path_buf();
        let (cp, took) = ControlPlane::start(config)?;
        registry().agents.extend(cp.pids());
        registry().dirs.push(cp.dir().to_path_buf());
        ip_in(cp.ns_name(), &format!("addr add {API_IP}/32 dev lo"))?;
        Ok((Servers(Some(cp)), took))
    }

    fn cp(&self) -> &ControlPlane {
        self.0.as_ref().expect("running until dropped")
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(cp) = self.0.take() {
            let pids = cp.pids();
            let name = cp.ns_name().to_string();
            let dir = cp.dir().to_path_buf();
            registry().agents.retain(|p| !pids.contains(p));
            drop(cp);
            registry().namespaces.retain(|n| *n != name);
            registry().dirs.retain(|d| *d != dir);
        }
    }
}

/// CPU seconds (user + system) process `pid` has used so far; with
/// `children`, those of its children it has reaped too (the proxies' `nft`
/// runs).
fn cpu_s(pid: u32, children: bool) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest: Vec<&str> = stat
        .rsplit(')')
        .next()
        .context("a /proc stat line")?
        .split_whitespace()
        .collect();
    // utime, stime, cutime, cstime are fields 14–17; `rest` starts at
    // field 3.
    let fields = if children { 11..15 } else { 11..13 };
    let mut ticks = 0u64;
    for f in &rest[fields] {
        ticks += f.parse::<u64>()?;
    }
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// CPU seconds of the API server, etcd and the proxy at one moment.
#[derive(Clone, Copy, Default)]
struct Cpu {
    apiserver: f64,
    etcd: f64,
    proxy: f64,
}

impl Cpu {
    fn now(cp: &ControlPlane, proxy: Option<u32>) -> Result<Cpu> {
        Ok(Cpu {
            apiserver: cpu_s(cp.apiserver_pid(), false)?,
            etcd: cpu_s(cp.etcd_pid(), false)?,
            proxy: proxy.map(|p| cpu_s(p, true)).transpose()?.unwrap_or(0.0),
        })
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            apiserver: self.apiserver - earlier.apiserver,
            etcd: self.etcd - earlier.etcd,
            proxy: self.proxy - earlier.proxy,
        }
    }

    fn add(&mut self, other: Cpu) {
        self.apiserver += other.apiserver;
        self.etcd += other.etcd;
        self.proxy += other.proxy;
    }
}

// ---------------------------------------------------------------------------
// The API, from a thread inside the control plane's namespace.

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime, &Client) + Send>;

/// A Kubernetes client whose requests run on one thread inside the control
/// plane's namespace (its sockets are opened there), one call at a time.
pub struct Api {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Api {
    fn start(cp: &ControlPlane) -> Result<Api> {
        let ns = NetNs::open(netns::named_path(cp.ns_name()))?;
        let kubeconfig = cp.kubeconfig().to_path_buf();
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel::<Result<()>>();
        let thread = std::thread::spawn(move || {
            let served = ns.run_in(|| {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return ready.send(Err(e.into())),
                };
                let client = match rt.block_on(client(&kubeconfig)) {
                    Ok(c) => c,
                    Err(e) => return ready.send(Err(e)),
                };
                let _ = ready.send(Ok(()));
                for job in queue {
                    job(&rt, &client);
                }
                Ok(())
            });
            if let Err(e) = served {
                eprintln!("the API thread: {e}");
            }
        });
        started.recv().context("the API thread ended")??;
        Ok(Api {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Runs `work` with the client on the API thread; its result.
    fn call<T, F, Fut>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let (done, result) = mpsc::channel();
        let job: Job = Box::new(move |rt, client| {
            let _ = done.send(rt.block_on(work(client.clone())));
        });
        let gone = || anyhow!("the API thread is gone");
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())?;
        result.recv().map_err(|_| gone())?
    }

    /// Creates `object` in the benchmark's namespace.
    pub fn create<K>(&self, object: K) -> Result<()>
    where
        K: Namespaced,
    {
        self.create_all(vec![object], 1)
    }

    /// Creates `objects` in the benchmark's namespace, `writers` requests
    /// at a time.
    fn create_all<K>(&self, objects: Vec<K>, writers: usize) -> Result<()>
    where
        K: Namespaced,
    {
        self.call(move |client| async move {
            let api = kube::Api::<K>::namespaced(client, NAMESPACE);
            futures::stream::iter(objects)
                .map(|o| {
                    let api = api.clone();
                    async move { api.create(&PostParams::default(), &o).await }
                })
                .buffer_unordered(writers.max(1))
                .try_collect::<Vec<_>>()
                .await
                .context("creating objects through the API")?;
            Ok(())
        })
    }

    /// Deletes Services `names` and their slices.
    fn delete_services(&self, names: Vec<String>) -> Result<()> {
        self.call(move |client| async move {
            let services = kube::Api::<Service>::namespaced(client.clone(), NAMESPACE);
            let slices = kube::Api::<EndpointSlice>::namespaced(client, NAMESPACE);
            for name in names {
                services.delete(&name, &DeleteParams::default()).await?;
                slices
                    .delete(&format!("{name}-x7k2p"), &DeleteParams::default())
                    .await?;
            }
            Ok(())
        })
    }

    /// The benchmark's namespace, and a Node per proxy as a kubelet
    /// registers it (with its podCIDR, as node IPAM would set it, and its
    /// underlay address).
    fn prepare(&self, node_ip: Ipv4Addr) -> Result<()> {
        self.call(move |client| async move {
            let namespaces = kube::Api::<Namespace>::all(client.clone());
            let namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
            namespaces
                .create(&PostParams::default(), &namespace)
                .await?;
            let nodes = kube::Api::<Node>::all(client);
            for p in [Proxy::Weft, Proxy::KubeProxy] {
                let node: Node = serde_json::from_value(json!({
                    "metadata": {"name": p.node()},
                    "spec": {"podCIDR": p.pod_cidr(), "podCIDRs": [p.pod_cidr()]}
                }))?;
                nodes.create(&PostParams::default(), &node).await?;
                let status = json!({"status": {"addresses": [
                    {"type": "InternalIP", "address": node_ip.to_string()},
                    {"type": "Hostname", "address": p.node()}
                ]}});
                nodes
                    .patch_status(p.node(), &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
            }
            Ok(())
        })
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What [`Api::create`] takes: the benchmark's namespaced objects.
pub trait Namespaced:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + 'static
{
}

impl Namespaced for Service {}
impl Namespaced for EndpointSlice {}

async fn client(kubeconfig: &Path) -> Result<Client> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

// ---------------------------------------------------------------------------
// The beds and the proxies.

/// A bed for `proxy`, its node linked to the API server in namespace `cp`.
fn bed(proxy: Proxy, args: &Args, cp: &str, api: &Rc<Api>, kubeconfig: &Path) -> Result<Bed> {
    let bed = Bed::build(proxy.tag(), args, |_| {
        Ok(Cluster::Kube {
            api: api.clone(),
            kubeconfig: kubeconfig.to_path_buf(),
        })
    })?;
    let port = format!("api-{}", proxy.tag());
    let node_ip = proxy.api_link_ip();
    ip_in(
        &bed.node_name,
        &format!("link add api0 type veth peer name {port} netns {cp}"),
    )?;
    ip_in(&bed.node_name, &format!("addr add {node_ip}/32 dev api0"))?;
    ip_in(&bed.node_name, "link set api0 up")?;
    ip_in(
        &bed.node_name,
        &format!("route add {API_IP}/32 dev api0 src {node_ip}"),
    )?;
    ip_in(cp, &format!("link set {port} up"))?;
    ip_in(cp, &format!("route add {node_ip}/32 dev {port}"))?;
    Ok(bed)
}

/// Starts kube-proxy in nftables mode in the bed's node namespace.
fn start_kube_proxy(bed: &mut Bed, kubeconfig: &Path) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &bed.node_name])
        .arg(control_plane::peer("kube-proxy")?)
        .arg("--proxy-mode=nftables")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--hostname-override={}", Proxy::KubeProxy.node()))
        .arg(format!("--cluster-cidr={CLUSTER_CIDR}"))
        // Leave the host's conntrack table and the conntrack timeouts as
        // they are: zero means "do not set".
        .args([
            "--conntrack-max-per-core=0",
            "--conntrack-tcp-timeout-established=0",
            "--conntrack-tcp-timeout-close-wait=0",
            "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256",
            "--v=2",
        ]);
    bed.spawn(cmd)
}

/// Readable files under `root` and what they read, for the check that
/// kube-proxy changed nothing of the host's.
fn snapshot(root: &Path, into: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            snapshot(&path, into);
        } else if let Ok(value) = std::fs::read_to_string(&path) {
            into.insert(path, value);
        }
    }
}

/// The host's network sysctls and nf_conntrack's parameters (the counter
/// of live entries left out: host traffic moves it).
fn host_settings() -> BTreeMap<PathBuf, String> {
    let mut all = BTreeMap::new();
    snapshot(Path::new("/proc/sys/net"), &mut all);
    snapshot(Path::new("/sys/module/nf_conntrack/parameters"), &mut all);
    all.retain(|p, _| !p.ends_with("nf_conntrack_count"));
    all
}

fn changed_settings(
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
) -> Vec<String> {
    before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .map(|(p, v)| {
            format!(
                "{}: {} → {}",
                p.display(),
                v.trim(),
                after.get(p).map_or("(gone)", |a| a.trim())
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// One proxy's turn.

struct Turn {
    proxy: Proxy,
    full_sync_s: f64,
    full_sync_cpu: Cpu,
    synced: Memory,
    changed: Memory,
    svc_first: Change,
    slice_first: Change,
    /// Summed over all change windows (100 ms idle → write → connected →
    /// idle 100 ms).
    change_cpu: Cpu,
    host_changed: Vec<String>,
}

/// Starts `proxy` on its bed, measures its full sync, the changes and its
/// memory, stops it and deletes the Services it created.
fn turn(
    proxy: Proxy,
    bed: &mut Bed,
    args: &Args,
    servers: &Servers,
    weft: &Path,
    next_ip: &mut usize,
) -> Result<Turn> {
    let cp = servers.cp();
    let kubeconfig = match &bed.cluster {
        Cluster::Kube { kubeconfig, .. } => kubeconfig.clone(),
        Cluster::Store(_) => bail!("a --kube bed reads the API server"),
    };
    let before = host_settings();
    let cpu0 = Cpu::now(cp, None)?;
    let (mut w, full_sync_s) = spawn_until_connected(bed, |b| match proxy {
        Proxy::Weft => b.start_agent(weft, &args.agent_env),
        Proxy::KubeProxy => start_kube_proxy(b, &kubeconfig),
    })?;
    let pid = bed.agent()?.pid();
    // Sampled once the proxy went idle, so its last `nft` is reaped and
    // counted.
    w.wait_idle(Duration::from_millis(100), Duration::from_secs(60))?;
    let full_sync_cpu = Cpu::now(cp, Some(pid))?.since(cpu0);
    let seen: Vec<String> = proxy
        .milestones()
        .iter()
        .map(|(what, text)| match w.line(text) {
            Some((ms, line)) => match super::field(line, "ms") {
                Some(own) => format!("{what} {:.3} s ({own:.0} ms)", ms / 1e3),
                None => format!("{what} {:.3} s", ms / 1e3),
            },
            None => format!("{what} not seen"),
        })
        .collect();
    println!(
        "{}: spawn → first connection through a Service {full_sync_s:.3} s; CPU from the spawn until the proxy went idle: kube-apiserver {:.2} s, etcd {:.2} s, the proxy with its `nft` runs {:.2} s",
        proxy.name(),
        full_sync_cpu.apiserver,
        full_sync_cpu.etcd,
        full_sync_cpu.proxy
    );
    println!("  its log after the spawn: {}", seen.join("; "));
    std::thread::sleep(Duration::from_secs(2));
    let synced = bed.agent()?.memory()?;

    let (mut svc_first, mut slice_first, mut change_cpu) =
        (Change::default(), Change::default(), Cpu::default());
    let mut names = Vec::new();
    for k in 0..args.reps {
        for (order, into, letter) in [
            (Order::ServiceFirst, &mut svc_first, "a"),
            (Order::SliceFirst, &mut slice_first, "b"),
        ] {
            *next_ip += 1;
            let name = format!("chg-{}-{letter}-{k}", proxy.tag());
            // kube-proxy does not start a sync within --min-sync-period
            // (1 s) of its last one: let every change find either proxy
            // idle for longer, so that wait is not what is measured.
            super::idle_for(bed, pid, QUIET)?;
            let c0 = Cpu::now(cp, Some(pid))?;
            new_service(bed, pid, &name, change_ip(*next_ip), order, into)?;
            change_cpu.add(Cpu::now(cp, Some(pid))?.since(c0));
            names.push(name);
        }
    }
    let changed = bed.agent()?.memory()?;
    let host_changed = changed_settings(&before, &host_settings());
    bed.agent = None;
    if let Cluster::Kube { api, .. } = &bed.cluster {
        api.delete_services(names)?;
    }
    Ok(Turn {
        proxy,
        full_sync_s,
        full_sync_cpu,
        synced,
        changed,
        svc_first,
        slice_first,
        change_cpu,
        host_changed,
    })
}

// ---------------------------------------------------------------------------
// The API server alone: a plain list.

/// A plain list of `resource` from the bed's node, as the proxies' first
/// list asks for it (their label selector, `resourceVersion=0`: from the
/// apiserver's watch cache): median seconds of `reps` and the bytes.
fn timed_list(
    bed: &Bed,
    cp: &ControlPlane,
    path: &str,
    accept: &str,
    reps: usize,
) -> Result<(f64, u64)> {
    let selector = PROXY_SELECTOR.replace('!', "%21").replace(',', "%2C");
    let url = format!(
        "https://{API_IP}:{}{path}?resourceVersion=0&labelSelector={selector}",
        control_plane::APISERVER_PORT
    );
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..reps {
        let out = bed
            .node
            .command("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total} %{size_download}",
            ])
            .arg("--cacert")
            .arg(cp.ca_file())
            .args(["-H", &format!("Authorization: Bearer {}", cp.admin_token())])
            .args(["-H", &format!("Accept: {accept}")])
            .arg(&url)
            .output()
            .context("running curl")?;
        if !out.status.success() {
            bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        times.push(words.next().context("curl's time")?.parse()?);
        bytes = words.next().context("curl's size")?.parse()?;
    }
    Ok((median(&times), bytes))
}

// ---------------------------------------------------------------------------
// The run.

pub fn run(args: Args) -> Result<()> {
    let weft = super::prepare(&args)?;
    for name in ["etcd", "kube-apiserver", "kube-proxy"] {
        control_plane::peer(name)?;
    }
    let (n, per) = (args.services, args.endpoints);
    println!(
        "# weft agent vs kube-proxy {KUBERNETES_VERSION} (nftables): {n} Services × {per} endpoints from one kube-apiserver"
    );
    println!("load average at start: {}", super::loadavg());
    let (servers, ready) = Servers::start(&args.dir)?;
    println!(
        "etcd + kube-apiserver ready after {:.1} s",
        ready.as_secs_f64()
    );
    let cp = servers.cp();
    let api = Rc::new(Api::start(cp)?);
    let node_kubeconfig = cp.write_kubeconfig("kubeconfig-nodes", cp.admin_token(), API_IP)?;
    let mut beds = BTreeMap::new();
    for p in [Proxy::Weft, Proxy::KubeProxy] {
        beds.insert(
            p.tag(),
            bed(p, &args, cp.ns_name(), &api, &node_kubeconfig)?,
        );
    }
    api.prepare(Ipv4Addr::new(198, 18, 0, 10))?;

    let (services, slices) = table(n, per)?;
    let t = Instant::now();
    let cpu0 = Cpu::now(cp, None)?;
    api.create_all(services, args.writers)?;
    api.create_all(slices, args.writers)?;
    let wrote = t.elapsed().as_secs_f64();
    let write_cpu = Cpu::now(cp, None)?.since(cpu0);
    println!(
        "wrote {n} Services + {n} EndpointSlices through the API in {wrote:.1} s ({:.0} objects/s, {} requests at a time; kube-apiserver {:.1} s CPU, etcd {:.1} s), before any proxy started",
        (2 * n) as f64 / wrote,
        args.writers,
        write_cpu.apiserver,
        write_cpu.etcd
    );

    let lists = plain_lists(&beds["weft"], cp)?;
    let order = match args.first {
        First::Weft => [Proxy::Weft, Proxy::KubeProxy],
        First::KubeProxy => [Proxy::KubeProxy, Proxy::Weft],
    };
    let mut next_ip = 0;
    let mut turns = Vec::new();
    for p in order {
        println!("\n## {}", p.name());
        let bed = beds.get_mut(p.tag()).expect("a bed per proxy");
        turns.push(turn(p, bed, &args, &servers, &weft, &mut next_ip)?);
    }
    println!("load average at the end: {}", super::loadavg());
    let find = |p: Proxy| turns.iter().find(|t| t.proxy == p).expect("both ran");
    report(&args, find(Proxy::Weft), find(Proxy::KubeProxy), &lists);
    if let Some(keep) = &args.keep_logs {
        super::keep_logs(keep, &beds.values().collect::<Vec<_>>())?;
    }
    Ok(())
}

/// Median seconds and bytes of the plain lists: (Services, slices) ×
/// (JSON, protobuf).
struct Lists {
    services_json: (f64, u64),
    slices_json: (f64, u64),
    services_pb: (f64, u64),
    slices_pb: (f64, u64),
}

fn plain_lists(bed: &Bed, cp: &ControlPlane) -> Result<Lists> {
    let json = "application/json";
    let pb = "application/vnd.kubernetes.protobuf";
    let services = "/api/v1/services";
    let slices = "/apis/discovery.k8s.io/v1/endpointslices";
    let lists = Lists {
        services_json: timed_list(bed, cp, services, json, 5)?,
        slices_json: timed_list(bed, cp, slices, json, 5)?,
        services_pb: timed_list(bed, cp, services, pb, 5)?,
        slices_pb: timed_list(bed, cp, slices, pb, 5)?,
    };
    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "a plain list from a node (median of 5, curl): Services {:.3} s JSON ({:.1} MiB) / {:.3} s protobuf ({:.1} MiB); EndpointSlices {:.3} s JSON ({:.1} MiB) / {:.3} s protobuf ({:.1} MiB)",
        lists.services_json.0,
        mib(lists.services_json.1),
        lists.services_pb.0,
        mib(lists.services_pb.1),
        lists.slices_json.0,
        mib(lists.slices_json.1),
        lists.slices_pb.0,
        mib(lists.slices_pb.1)
    );
    Ok(lists)
}

fn report(args: &Args, weft: &Turn, kp: &Turn, lists: &Lists) {
    for t in [weft, kp] {
        println!(
            "\n{}: a) new Service, then its EndpointSlice: {}\n{}: b) new EndpointSlice, then its Service: {}",
            t.proxy.name(),
            t.svc_first.brief(),
            t.proxy.name(),
            t.slice_first.brief()
        );
        if t.host_changed.is_empty() {
            println!(
                "{}: the host's /proc/sys/net and nf_conntrack parameters read the same before and after",
                t.proxy.name()
            );
        } else {
            println!(
                "{}: host settings that changed meanwhile:\n  {}",
                t.proxy.name(),
                t.host_changed.join("\n  ")
            );
        }
    }
    let reps = (2 * args.reps) as f64;
    let ms = |c: &Change| format!("{:.1} / {:.1}", median(&c.e2e_ms), max(&c.e2e_ms));
    let ratio = |a: f64, b: f64| format!("{:.3}×", a / b);
    println!("\n## summary (markdown)\n");
    println!(
        "| {} Services × {} endpoints, one kube-apiserver | weft agent | kube-proxy {KUBERNETES_VERSION} nftables | weft / kube-proxy | goal |",
        args.services, args.endpoints
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| full sync: spawn → first connection through a Service (s) | **{:.2}** | {:.2} | **{}** | ≤ 0.2× |",
        weft.full_sync_s,
        kp.full_sync_s,
        ratio(weft.full_sync_s, kp.full_sync_s)
    );
    println!(
        "| … CPU from the spawn until the proxy is idle: kube-apiserver / etcd / the proxy with its `nft` runs (s) | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | | |",
        weft.full_sync_cpu.apiserver,
        weft.full_sync_cpu.etcd,
        weft.full_sync_cpu.proxy,
        kp.full_sync_cpu.apiserver,
        kp.full_sync_cpu.etcd,
        kp.full_sync_cpu.proxy
    );
    for (what, w, k) in [
        (
            "new Service, then its EndpointSlice: API write → first connection, median / max (ms)",
            &weft.svc_first,
            &kp.svc_first,
        ),
        (
            "new EndpointSlice, then its Service: API write → first connection, median / max (ms)",
            &weft.slice_first,
            &kp.slice_first,
        ),
    ] {
        println!(
            "| {what} | **{}** | {} | **{}** | ≤ 0.05× |",
            ms(w),
            ms(k),
            ratio(median(&w.e2e_ms), median(&k.e2e_ms))
        );
    }
    println!(
        "| … CPU per change (100 ms before the write → connected → 100 ms without `nft`), mean: kube-apiserver / etcd / the proxy with its `nft` runs (ms) | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | | |",
        weft.change_cpu.apiserver * 1e3 / reps,
        weft.change_cpu.etcd * 1e3 / reps,
        weft.change_cpu.proxy * 1e3 / reps,
        kp.change_cpu.apiserver * 1e3 / reps,
        kp.change_cpu.etcd * 1e3 / reps,
        kp.change_cpu.proxy * 1e3 / reps
    );
    for (what, w, k) in [
        ("after the full sync", weft.synced, kp.synced),
        ("after the changes", weft.changed, kp.changed),
    ] {
        println!(
            "| memory {what}: VmRSS / VmHWM (MiB) | **{:.1}** / {:.1} | {:.1} / {:.1} | **{}** | ≤ 0.3× |",
            w.rss_mib(),
            w.hwm_mib(),
            k.rss_mib(),
            k.hwm_mib(),
            ratio(w.rss_mib(), k.rss_mib())
        );
    }
    println!(
        "| the API server alone: a plain list of all Services + all EndpointSlices from a node, JSON / protobuf (s) | {:.2} / {:.2} | | | |",
        lists.services_json.0 + lists.slices_json.0,
        lists.services_pb.0 + lists.slices_pb.0
    );
}
