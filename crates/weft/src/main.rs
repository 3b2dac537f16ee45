//! `weft`: the command-line tool of the weft pod network.

mod agent;
mod lab;
mod period;

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
    Agent(Box<agent::AgentArgs>),
    /// A whole cluster network on this machine: nodes, pods, probes.
    #[command(subcommand)]
    Lab(lab::LabCmd),
    /// The lab's built-in test server (HTTP /hostname, /clientip, /echo; UDP echo).
    #[command(hide = true)]
    Netexec(lab::NetexecArgs),
}

fn main() -> Result<()> {
    end_quietly_on_broken_pipe();
    match Cli::parse().command {
        Cmd::Agent(args) => agent::run(*args),
        Cmd::Lab(cmd) => lab::run(cmd),
        Cmd::Netexec(args) => lab::netexec(args),
    }
}

/// The status a shell reports for a program that SIGPIPE ended (128 + 13).
const BROKEN_PIPE_STATUS: i32 = 141;

/// `weft lab get pods | head`: once the reader is gone, printing fails with
/// EPIPE and `println!` panics; weft ends quietly instead, with the status
/// `cat` would have. SIGPIPE itself stays ignored (Rust's default), so a
/// write to a child's stdin (the CNI plugin's, nft's) that fails is still
/// an error weft reports rather than a silent death mid-change.
fn end_quietly_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_broken_pipe_print(info.payload()) {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        report(info)
    }));
}

/// Whether a panic is the standard print macros' "failed printing to
/// stdout/stderr" for EPIPE.
fn is_broken_pipe_print(payload: &(dyn std::any::Any + Send)) -> bool {
    let message = match payload.downcast_ref::<String>() {
        Some(message) => message.as_str(),
        None => payload.downcast_ref::<&str>().copied().unwrap_or_default(),
    };
    let epipe = std::io::Error::from_raw_os_error(libc::EPIPE).to_string();
    message.starts_with("failed printing to std") && message.ends_with(&epipe)
}
