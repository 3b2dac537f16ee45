//! `weft-bench`: weft against the reference implementations, measured side
//! by side in one run on one machine, reported as ratios (absolute times on
//! shared machines mislead; ratios from one run do not).

mod cni;
mod flannel;
mod lab;
mod policy;
mod services;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft-bench",
    about = "weft benchmarks against the reference tools"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// weft-cni against the reference bridge + host-local plugins.
    Cni(cni::Args),
    /// The node agent and its backends, in weft lab.
    Lab(lab::Args),
    /// NetworkPolicy: 1,000 policies over 1,000 pods against none, same run.
    Policy(policy::Args),
    /// The Service proxy with 10,000 Services × 10 endpoints (with --kube: side by side with kube-proxy).
    Services(services::Args),
}

fn main() -> Result<()> {
    match Cli::parse().bench {
        Bench::Cni(args) => cni::run(args),
        Bench::Lab(args) => lab::run(args),
        Bench::Policy(args) => policy::run(args),
        Bench::Services(args) => services::run(args),
    }
}
