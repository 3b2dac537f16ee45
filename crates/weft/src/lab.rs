//! `weft lab …`: the command line of the lab; the work is in `weft-lab`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use weft_lab::layout::{DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR, DEFAULT_UNDERLAY};
use weft_lab::ops::{
    self, Binaries, ExecTarget, LabelChange, Labelled, NodeAction, Output, ProbeOptions, UpOptions,
};
use weft_lab::probe::Protocol;
use weft_lab::report::{self, Event};

const DEFAULT_LAB: &str = "weft";

#[derive(Subcommand)]
pub enum LabCmd {
    /// Carry TCP connections from a loopback address of the host to an
    /// address inside a network namespace (a lab's door for kubectl on the
    /// host; it listens on loopback only).
    #[command(hide = true)]
    Forward {
        /// The named network namespace (`ip netns` name) to carry into.
        #[arg(long)]
        netns: String,
        /// Where to listen, e.g. 127.0.0.1:16443.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The address inside the namespace, e.g. 127.0.0.1:6443.
        #[arg(long)]
        to: std::net::SocketAddr,
    },
    /// Run one container's process, restarting and probing it as its pod
    /// says, and keep its pod's status (used by the lab's kubelet; not for
    /// users).
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        lab: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        pod: String,
        #[arg(long)]
        uid: String,
        #[arg(long)]
        container: String,
        /// The pod's restartPolicy (Always, OnFailure, Never).
        #[arg(long, default_value = "Always", value_parser = weft_lab::supervisor::RestartPolicy::parse)]
        restart_policy: weft_lab::supervisor::RestartPolicy,
        /// The container's probes, as the container's JSON (name, ports
        /// and the startup, liveness and readiness probes).
        #[arg(long)]
        probes: Option<String>,
        /// The pod's address, which the probes connect to.
        #[arg(long, default_value = "127.0.0.1")]
        pod_ip: std::net::IpAddr,
        /// The pod's terminationGracePeriodSeconds (a container stopped by
        /// a failed probe is killed after it).
        #[arg(long, default_value_t = 30)]
        grace_seconds: u64,
        /// Keep the pod's status on this kubeconfig's API server (a lab
        /// with a Kubernetes control plane) instead of the lab's store.
        #[arg(long)]
        kubeconfig: Option<std::path::PathBuf>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a lab node's kubelet against the lab's Kubernetes control plane
    /// (started by `weft lab up --control-plane kubernetes`; not for users).
    #[command(hide = true)]
    Kubelet {
        #[arg(long)]
        lab: String,
        #[arg(long)]
        node: String,
    },
    /// Print the path of the admin kubeconfig of a lab whose control plane
    /// is Kubernetes (for kubectl on this machine).
    Kubeconfig {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
    },
    /// Create a lab: underlay, nodes, one real agent per node.
    Up {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long, default_value = "vxlan")]
        backend: String,
        #[arg(long, default_value = DEFAULT_POD_CIDR)]
        pod_cidr: String,
        /// The nodes' network (must not overlap the host's routes).
        #[arg(long, default_value = DEFAULT_UNDERLAY)]
        underlay_cidr: String,
        /// Services' clusterIPs (must not overlap the host's routes, the pods or the underlay).
        #[arg(long, default_value = DEFAULT_SERVICE_CIDR)]
        service_cidr: String,
        /// LoadBalancer addresses, inside the underlay [default: its last 16 addresses, 198.18.0.240/28].
        #[arg(long)]
        lb_cidr: Option<String>,
        /// What holds the cluster's state: weft's embedded store, or
        /// Kubernetes' own etcd, kube-apiserver, kube-controller-manager and
        /// kube-scheduler (from `./scripts/setup.sh --peers`), driven with kubectl.
        #[arg(long, value_enum, default_value = "embedded")]
        control_plane: ControlPlaneArg,
        /// What implements Services on the nodes: weft's proxy in every
        /// agent, or kube-proxy v1.36.3 (nftables mode, from the peers
        /// cache; needs `--control-plane kubernetes`), to compare the two.
        #[arg(long, value_enum, default_value = "weft")]
        proxy: ProxyArg,
        /// What runs every node's pod network: `weft agent`, or the real
        /// flanneld v0.28.9 (from the peers cache) with pods wired as
        /// flannel's CNI chain wires them; needs `--control-plane kubernetes`.
        /// `weft lab node add --network` mixes the two.
        #[arg(long, value_enum, default_value = "weft")]
        network: NetworkArg,
        /// Where the nodes keep their subnet leases: the cluster (the lab's
        /// store, or the Nodes of its API server), or the lab's etcd in
        /// flannel's layout (`--control-plane kubernetes` only).
        #[arg(long, value_enum, default_value = "cluster")]
        subnet_store: SubnetStoreArg,
    },
    /// Remove a lab (or all) with every namespace, process and file.
    Down {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(long)]
        all: bool,
    },
    /// Create the objects of a manifest (Namespace, Pod, Deployment, Service, NetworkPolicy, ClusterNetworkPolicy); Services and policies are updated.
    Apply {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        /// The manifest file, or - for stdin.
        #[arg(short = 'f', long)]
        file: String,
    },
    /// Delete the Services, NetworkPolicies, ClusterNetworkPolicies and pods of a manifest (`-f FILE`), one pod (`pod NAME`), one Service (`service NAME`), one NetworkPolicy (`networkpolicy NAME`) or one ClusterNetworkPolicy (`clusternetworkpolicy NAME`, cluster-scoped: no -n).
    Delete {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(short = 'f', long)]
        file: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Seconds a deleted pod keeps running, its endpoints terminating (the command waits).
        #[arg(long, default_value_t = 0)]
        grace_period: u64,
        /// `pod NAME` | `service NAME` | `networkpolicy NAME` | `clusternetworkpolicy NAME` (cnp)
        what: Vec<String>,
    },
    /// List nodes, pods, services, endpointslices, events, networkpolicies or clusternetworkpolicies.
    Get {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        /// nodes | pods | services (svc) | endpointslices | events (ev) | networkpolicies (netpol) | clusternetworkpolicies (cnp)
        resource: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputArg>,
    },
    /// Run a command in a pod's (or node's, or the external client's) network namespace.
    Exec {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Run in this node's namespace instead of a pod's.
        #[arg(long)]
        node: Option<String>,
        /// Run in the external client's namespace (on the underlay, outside the cluster).
        #[arg(long)]
        external: bool,
        /// The container (all containers of a pod share its network).
        #[arg(short = 'c', long)]
        container: Option<String>,
        pod: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a container's output.
    Logs {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
    },
    /// Denied connections, as the nodes' agents logged and explained them.
    Denials {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
        /// Keep printing new denials until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Reachability matrix: every --from tries every --to, all targets at once (1 s timeout per attempt).
    Probe {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        /// POD, NAMESPACE/POD, node/NODE or external [default: every pod]
        #[arg(long)]
        from: Vec<String>,
        /// POD, svc/[NAMESPACE/]NAME[:PORT], node/NODE:PORT or IP:PORT [default: every pod]
        #[arg(long)]
        to: Vec<String>,
        /// The port of targets that name none.
        #[arg(long)]
        port: Option<u16>,
        /// [default: tcp, or a Service port's own protocol]
        #[arg(long, value_enum)]
        protocol: Option<ProtocolArg>,
        /// Attempts per pair, each on a new connection (or UDP socket).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// What each attempt asks: the HTTP path over TCP; over UDP /hostname or /clientip.
        #[arg(long, default_value = weft_lab::probe::HOSTNAME_PATH)]
        http_path: String,
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputArg>,
    },
    /// The policy verdict on a connection, per direction (ClusterNetworkPolicy Admin tier, NetworkPolicy, Baseline tier), with the policy and rule that decided: the model the agents enforce.
    Explain {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        /// POD, NAMESPACE/POD, node/NODE or external
        #[arg(long)]
        from: String,
        /// NAMESPACE/POD[:PORT][/PROTO] or svc/NAMESPACE/NAME[:PORT][/PROTO] (svc/NAME[:PORT] in default)
        #[arg(long)]
        to: String,
        /// The pod's port [default: its first declared port]
        #[arg(long)]
        port: Option<u16>,
        /// [default: tcp]
        #[arg(long, value_enum)]
        protocol: Option<PolicyProtocolArg>,
    },
    /// Change a pod's or a namespace's labels (kubectl's rules: KEY=VALUE sets, KEY- removes, a new value needs --overwrite); pods keep running.
    Label {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        overwrite: bool,
        /// pod | namespace
        kind: String,
        object: String,
        /// KEY=VALUE or KEY-
        #[arg(required = true, value_parser = label_change)]
        changes: Vec<LabelChange>,
    },
    /// Add, remove, stop (kill the agent, keep the datapath) or start a node.
    Node {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(value_enum)]
        action: NodeActionArg,
        node: String,
        /// What runs the added node's pod network: weft, or the real
        /// flanneld (needs a lab with `--control-plane kubernetes`).
        #[arg(long, value_enum, default_value = "weft")]
        network: NetworkArg,
    },
    /// Every lab with its nodes and pods.
    Status,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyArg {
    Weft,
    KubeProxy,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    Weft,
    Flannel,
}

impl From<NetworkArg> for weft_lab::layout::Network {
    fn from(arg: NetworkArg) -> Self {
        match arg {
            NetworkArg::Weft => Self::Weft,
            NetworkArg::Flannel => Self::Flannel,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubnetStoreArg {
    Cluster,
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ControlPlaneArg {
    Embedded,
    Kubernetes,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputArg {
    Wide,
    Json,
}

fn label_change(text: &str) -> Result<LabelChange, String> {
    LabelChange::parse(text)
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PolicyProtocolArg {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum NodeActionArg {
    Add,
    Remove,
    Stop,
    Start,
}

fn output(o: Option<OutputArg>) -> Output {
    match o {
        None => Output::Table,
        Some(OutputArg::Wide) => Output::Wide,
        Some(OutputArg::Json) => Output::Json,
    }
}

fn read_manifest(file: &str) -> Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(PathBuf::from(file)).with_context(|| format!("reading {file}"))
}

/// Shows one thing a lab operation did, as it happens.
fn print_event(event: Event) {
    println!("{event}");
}

pub fn run(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up {
            name,
            nodes,
            backend,
            pod_cidr,
            underlay_cidr,
            service_cidr,
            lb_cidr,
            control_plane,
            proxy,
            network,
            subnet_store,
        } => ops::up(
            &UpOptions {
                name,
                nodes,
                backend,
                pod_cidr,
                underlay: underlay_cidr,
                service_cidr,
                lb_cidr,
                kubernetes: control_plane == ControlPlaneArg::Kubernetes,
                proxy: match proxy {
                    ProxyArg::Weft => weft_lab::layout::Proxy::Weft,
                    ProxyArg::KubeProxy => weft_lab::layout::Proxy::KubeProxy,
                },
                network: network.into(),
                subnet_store: match subnet_store {
                    SubnetStoreArg::Cluster => weft_lab::layout::SubnetStore::Cluster,
                    SubnetStoreArg::Etcd => weft_lab::layout::SubnetStore::Etcd,
                },
            },
            &Binaries::beside_current_exe()?,
            &mut print_event,
        ),
        LabCmd::Down { name, all } => {
            if all {
                ops::down_all(&mut print_event)
            } else {
                ops::down(&name, &mut print_event)
            }
        }
        LabCmd::Apply { name, file } => ops::apply(
            &name,
            &read_manifest(&file)?,
            &Binaries::beside_current_exe()?,
            &mut print_event,
        ),
        LabCmd::Delete {
            name,
            file,
            namespace,
            grace_period,
            what,
        } => {
            let bins = Binaries::beside_current_exe()?;
            let grace = Duration::from_secs(grace_period);
            match (file, what.as_slice()) {
                (Some(f), []) => ops::delete_manifest(
                    &name,
                    &read_manifest(&f)?,
                    grace,
                    &bins,
                    &mut print_event,
                ),
                (None, [kind, pod]) if matches!(kind.as_str(), "pod" | "pods" | "po") => {
                    ops::delete_pod(&name, &namespace, pod, grace, &bins, &mut print_event)
                }
                (None, [kind, svc]) if matches!(kind.as_str(), "service" | "services" | "svc") => {
                    ops::delete_service(&name, &namespace, svc, &mut print_event)
                }
                (None, [kind, policy]) if matches!(kind.as_str(), "networkpolicy" | "networkpolicies" | "netpol") => {
                    ops::delete_network_policy(&name, &namespace, policy, &mut print_event)
                }
                (None, [kind, policy])
                    if matches!(
                        kind.as_str(),
                        "clusternetworkpolicy" | "clusternetworkpolicies" | "cnp"
                    ) =>
                {
                    ops::delete_cluster_network_policy(&name, policy, &mut print_event)
                }
                _ => bail!(
                    "use `weft lab delete -f FILE`, `weft lab delete pod NAME`, `weft lab delete service NAME`, `weft lab delete networkpolicy NAME` or `weft lab delete clusternetworkpolicy NAME`"
                ),
            }
        }
        LabCmd::Get {
            name,
            resource,
            namespace,
            all_namespaces,
            output: o,
        } => {
            let ns = if all_namespaces {
                None
            } else {
                Some(namespace.as_deref().unwrap_or("default"))
            };
            let output = output(o);
            let text = match resource.as_str() {
                "nodes" | "node" | "no" => {
                    let (nodes, rows) = ops::get_nodes(&name)?;
                    match output {
                        Output::Json => ops::list_json("NodeList", &nodes)? + "\n",
                        _ => report::nodes(&rows),
                    }
                }
                "pods" | "pod" | "po" => {
                    let (pods, rows) = ops::get_pods(&name, ns)?;
                    match output {
                        Output::Json => ops::list_json("PodList", &pods)? + "\n",
                        wide => report::pods(&rows, wide == Output::Wide),
                    }
                }
                "services" | "service" | "svc" => ops::get_services(&name, ns, output)?,
                "endpointslices" | "endpointslice" => ops::get_endpointslices(&name, ns, output)?,
                "events" | "event" | "ev" => ops::get_events(&name, ns, output)?,
                "networkpolicies" | "networkpolicy" | "netpol" => {
                    ops::get_network_policies(&name, ns, output)?
                }
                "clusternetworkpolicies" | "clusternetworkpolicy" | "cnp" => {
                    ops::get_cluster_network_policies(&name, output)?
                }
                other => {
                    bail!("cannot get {other:?}: use nodes, pods, services (svc), endpointslices, events (ev), networkpolicies (netpol) or clusternetworkpolicies (cnp)")
                }
            };
            print!("{text}");
            Ok(())
        }
        LabCmd::Explain {
            name,
            from,
            to,
            port,
            protocol,
        } => {
            let opts = ops::ExplainOptions {
                from,
                to,
                port,
                protocol: protocol.map(|p| match p {
                    PolicyProtocolArg::Tcp => weft_policy::model::Protocol::Tcp,
                    PolicyProtocolArg::Udp => weft_policy::model::Protocol::Udp,
                    PolicyProtocolArg::Sctp => weft_policy::model::Protocol::Sctp,
                }),
            };
            print!("{}", ops::explain(&name, &opts)?);
            Ok(())
        }
        LabCmd::Label {
            name,
            namespace,
            overwrite,
            kind,
            object,
            changes,
        } => {
            let kind = match kind.as_str() {
                "pod" | "pods" | "po" => Labelled::Pod,
                "namespace" | "namespaces" | "ns" => Labelled::Namespace,
                other => bail!("cannot label {other:?}: use pod or namespace"),
            };
            ops::label(
                &name,
                kind,
                &namespace,
                &object,
                &changes,
                overwrite,
                &mut print_event,
            )
        }
        LabCmd::Exec {
            name,
            namespace,
            node,
            external,
            container: _,
            pod,
            command,
        } => {
            let target = match (node, pod, external) {
                (Some(n), None, false) => ExecTarget::Node(n),
                (None, Some(p), false) => ExecTarget::Pod { namespace, name: p },
                (None, None, true) => ExecTarget::External,
                _ => bail!("give one of: a pod, --node NODE or --external"),
            };
            let code = ops::exec(&name, &target, &command)?;
            std::process::exit(code);
        }
        LabCmd::Logs {
            name,
            namespace,
            pod,
            container,
        } => {
            print!(
                "{}",
                ops::logs(&name, &namespace, &pod, container.as_deref())?
            );
            Ok(())
        }
        LabCmd::Denials { name, node, follow } => {
            let opts = ops::DenialsOptions { node, follow };
            ops::denials(&name, &opts, &mut |line| {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            })
        }
        LabCmd::Probe {
            name,
            from,
            to,
            port,
            protocol,
            count,
            http_path,
            output: o,
        } => {
            let opts = ProbeOptions {
                from,
                to,
                port,
                protocol: protocol.map(|p| match p {
                    ProtocolArg::Tcp => Protocol::Tcp,
                    ProtocolArg::Udp => Protocol::Udp,
                }),
                timeout: Duration::from_secs(1),
                count,
                http_path,
            };
            let results = ops::probe_matrix(&name, &opts)?;
            let all_ok = if matches!(o, Some(OutputArg::Json)) {
                let v = ops::matrix_json(&results);
                println!("{}", serde_json::to_string_pretty(&v)?);
                v["allOk"].as_bool().unwrap_or(false)
            } else {
                print!("{}", ops::matrix_text(&results));
                ops::all_ok(&results)
            };
            if !all_ok {
                std::process::exit(1);
            }
            Ok(())
        }
        LabCmd::Node {
            name,
            action,
            node,
            network,
        } => {
            let action = match action {
                NodeActionArg::Add => NodeAction::Add(network.into()),
                NodeActionArg::Remove => NodeAction::Remove,
                NodeActionArg::Stop => NodeAction::Stop,
                NodeActionArg::Start => NodeAction::Start,
            };
            ops::node(
                &name,
                &node,
                action,
                &Binaries::beside_current_exe()?,
                &mut print_event,
            )
        }
        LabCmd::Status => {
            print!("{}", report::status(&ops::status()));
            Ok(())
        }
        LabCmd::Forward { netns, listen, to } => {
            weft_validation::names::dns1123_label(&netns)
                .map_err(|e| anyhow::anyhow!("--netns {netns:?}: {e}"))?;
            let ns = weft_datapath::NetNs::open(weft_datapath::netns::named_path(&netns))
                .with_context(|| format!("opening network namespace {netns}"))?;
            let forwarder = weft_lab::forward::Forwarder::bind(listen, ns, to)?;
            forwarder.serve()
        }
        LabCmd::Kubelet { lab, node } => {
            crate::agent::init_logging();
            let bins = Binaries::beside_current_exe()?;
            weft_lab::node_kubelet::run(&lab, &node, bins.weft, bins.plugin)
        }
        LabCmd::Kubeconfig { name } => {
            println!("{}", ops::kubeconfig(&name)?.display());
            Ok(())
        }
        LabCmd::Supervise {
            lab,
            namespace,
            pod,
            uid,
            container,
            restart_policy,
            probes,
            pod_ip,
            grace_seconds,
            kubeconfig,
            command,
        } => {
            let (program, args) = command.split_first().context("no command to supervise")?;
            let container = weft_lab::supervisor::Container {
                lab,
                namespace,
                pod,
                uid,
                name: container,
            };
            let probes = match probes {
                Some(json) => {
                    let spec: k8s_openapi::api::core::v1::Container =
                        serde_json::from_str(&json)
                            .context("--probes is not a container's JSON")?;
                    weft_lab::container_probes::Probes::of(&spec).map_err(anyhow::Error::msg)?
                }
                None => Default::default(),
            };
            let lifecycle = weft_lab::supervisor::Lifecycle {
                restart_policy,
                probes,
                pod_ip,
                grace: std::time::Duration::from_secs(grace_seconds),
            };
            let status: std::sync::Arc<dyn weft_lab::pod_status::PodStatusStore> = match kubeconfig
            {
                Some(path) => std::sync::Arc::new(weft_lab::pod_status::ApiServer::connect(
                    container.clone(),
                    &path,
                )?),
                None => std::sync::Arc::new(weft_lab::pod_status::LabStore {
                    container: container.clone(),
                }),
            };
            let code = weft_lab::supervisor::run(
                &container,
                status,
                &lifecycle,
                Path::new(program),
                args,
            )?;
            std::process::exit(code);
        }
    }
}

#[derive(clap::Args)]
pub struct NetexecArgs {
    #[arg(long, default_value = "")]
    hostname: String,
    #[arg(long)]
    http_port: Vec<u16>,
    #[arg(long)]
    udp_port: Vec<u16>,
    /// Seconds to keep serving after SIGTERM (agnhost's flag).
    #[arg(long, default_value_t = 0)]
    delay_shutdown: u64,
}

/// The built-in test server a lab container runs; with no ports it idles.
pub fn netexec(a: NetexecArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let serving = async {
            if a.http_port.is_empty() && a.udp_port.is_empty() {
                std::future::pending::<()>().await;
            }
            let config = weft_lab::netexec::NetexecConfig {
                http_ports: a.http_port,
                udp_ports: a.udp_port,
                hostname: a.hostname,
                delay_shutdown: a.delay_shutdown,
            };
            weft_lab::netexec::serve(config).await
        };
        if a.delay_shutdown == 0 {
            // SIGTERM ends it at once (the default action), as agnhost.
            return Ok(serving.await?);
        }
        let mut terminated =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::pin!(serving);
        tokio::select! {
            served = &mut serving => served?,
            _ = terminated.recv() => {
                // Still serving meanwhile, as agnhost does.
                let delay = std::time::Duration::from_secs(a.delay_shutdown);
                let _ = tokio::time::timeout(delay, &mut serving).await;
            }
        }
        Ok(())
    })
}
