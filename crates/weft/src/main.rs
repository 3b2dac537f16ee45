//! `weft`: the command-line tool of the weft pod network.

mod demo;

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
    /// Wire two pods with weft-cni in throwaway network namespaces and show
    /// them pinging each other; everything is removed afterwards.
    Demo(demo::DemoArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Demo(args) => demo::run(args),
    }
}
