//! `weft`: the command-line tool of the weft pod network.

mod agent;
mod lab;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft", version, about = "weft: a Kubernetes pod network")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node agent: lease a subnet, connect this node to all others.
    Agent(agent::AgentArgs),
    /// A whole cluster network on this machine: nodes, pods, probes.
    #[command(subcommand)]
    Lab(lab::LabCmd),
    /// The lab's built-in test server (HTTP /hostname, /clientip, /echo; UDP echo).
    #[command(hide = true)]
    Netexec(lab::NetexecArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Agent(args) => agent::run(args),
        Cmd::Lab(cmd) => lab::run(cmd),
        Cmd::Netexec(args) => lab::netexec(args),
    }
}
