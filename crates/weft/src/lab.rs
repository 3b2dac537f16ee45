//! `weft lab …`: the command line of the lab; the work is in `weft-lab`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use weft_lab::layout::{DEFAULT_POD_CIDR, DEFAULT_UNDERLAY};
use weft_lab::ops::{self, Binaries, ExecTarget, NodeAction, Output, ProbeOptions, UpOptions};
use weft_lab::probe::Protocol;

const DEFAULT_LAB: &str = "weft";

#[derive(Subcommand)]
pub enum LabCmd {
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
    },
    /// Remove a lab (or all) with every namespace, process and file.
    Down {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(long)]
        all: bool,
    },
    /// Create the objects of a manifest (Namespace, Pod, Deployment).
    Apply {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        /// The manifest file, or - for stdin.
        #[arg(short = 'f', long)]
        file: String,
    },
    /// Delete the pods of a manifest (`-f FILE`) or one pod (`pod NAME`).
    Delete {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(short = 'f', long)]
        file: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// `pod NAME`
        what: Vec<String>,
    },
    /// List nodes or pods.
    Get {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        /// nodes | pods
        resource: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputArg>,
    },
    /// Run a command in a pod's (or node's) network namespace.
    Exec {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Run in this node's namespace instead of a pod's.
        #[arg(long)]
        node: Option<String>,
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
    /// Reachability matrix: every --from pod tries every --to pod (1 s timeout).
    Probe {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(long)]
        from: Vec<String>,
        #[arg(long)]
        to: Vec<String>,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: ProtocolArg,
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputArg>,
    },
    /// Add, remove, stop (kill the agent, keep the datapath) or start a node.
    Node {
        #[arg(long, default_value = DEFAULT_LAB)]
        name: String,
        #[arg(value_enum)]
        action: NodeActionArg,
        node: String,
    },
    /// Every lab with its nodes and pods.
    Status,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputArg {
    Wide,
    Json,
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

pub fn run(cmd: LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Up {
            name,
            nodes,
            backend,
            pod_cidr,
            underlay_cidr,
        } => ops::up(
            &UpOptions {
                name,
                nodes,
                backend,
                pod_cidr,
                underlay: underlay_cidr,
            },
            &Binaries::beside_current_exe()?,
        ),
        LabCmd::Down { name, all } => {
            if all {
                ops::down_all()
            } else {
                ops::down(&name)
            }
        }
        LabCmd::Apply { name, file } => ops::apply(
            &name,
            &read_manifest(&file)?,
            &Binaries::beside_current_exe()?,
        ),
        LabCmd::Delete {
            name,
            file,
            namespace,
            what,
        } => {
            let bins = Binaries::beside_current_exe()?;
            match (file, what.as_slice()) {
                (Some(f), []) => ops::delete_manifest(&name, &read_manifest(&f)?, &bins),
                (None, [kind, pod]) if kind == "pod" || kind == "pods" => {
                    ops::delete_pod(&name, &namespace, pod, &bins)
                }
                _ => bail!("use `weft lab delete -f FILE` or `weft lab delete pod NAME`"),
            }
        }
        LabCmd::Get {
            name,
            resource,
            namespace,
            all_namespaces,
            output: o,
        } => match resource.as_str() {
            "nodes" | "node" | "no" => ops::get_nodes(&name, output(o)),
            "pods" | "pod" | "po" => {
                let ns = if all_namespaces {
                    None
                } else {
                    Some(namespace.as_deref().unwrap_or("default"))
                };
                ops::get_pods(&name, ns, output(o))
            }
            other => bail!("cannot get {other:?}: use nodes or pods"),
        },
        LabCmd::Exec {
            name,
            namespace,
            node,
            container: _,
            pod,
            command,
        } => {
            let target = match (node, pod) {
                (Some(n), None) => ExecTarget::Node(n),
                (None, Some(p)) => ExecTarget::Pod { namespace, name: p },
                _ => bail!("give either a pod or --node NODE"),
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
        LabCmd::Probe {
            name,
            from,
            to,
            port,
            protocol,
            output: o,
        } => {
            let opts = ProbeOptions {
                from,
                to,
                port,
                protocol: match protocol {
                    ProtocolArg::Tcp => Protocol::Tcp,
                    ProtocolArg::Udp => Protocol::Udp,
                },
                timeout: Duration::from_secs(1),
            };
            let results = ops::probe_matrix(&name, &opts)?;
            let all_ok = if matches!(o, Some(OutputArg::Json)) {
                let v = ops::matrix_json(&results);
                println!("{}", serde_json::to_string_pretty(&v)?);
                v["allOk"].as_bool().unwrap_or(false)
            } else {
                ops::print_matrix(&results)
            };
            if !all_ok {
                std::process::exit(1);
            }
            Ok(())
        }
        LabCmd::Node { name, action, node } => {
            let action = match action {
                NodeActionArg::Add => NodeAction::Add,
                NodeActionArg::Remove => NodeAction::Remove,
                NodeActionArg::Stop => NodeAction::Stop,
                NodeActionArg::Start => NodeAction::Start,
            };
            ops::node(&name, &node, action, &Binaries::beside_current_exe()?)
        }
        LabCmd::Status => ops::status(),
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
}

/// The built-in test server a lab container runs; with no ports it idles.
pub fn netexec(a: NetexecArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        if a.http_port.is_empty() && a.udp_port.is_empty() {
            std::future::pending::<()>().await;
        }
        let config = weft_lab::netexec::NetexecConfig {
            http_ports: a.http_port,
            udp_ports: a.udp_port,
            hostname: a.hostname,
        };
        weft_lab::netexec::serve(config).await?;
        Ok(())
    })
}
