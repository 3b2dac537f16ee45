//! `weft demo`: a node namespace with two pod namespaces, wired by the real
//! weft-cni binary exactly as a container runtime would (conflist, CNI
//! environment, stdin), then pinging each other. The bridge, veths and
//! rules live in the demo's own node namespace, never on the host, and are
//! removed at the end — also on failure or Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use weft_cni::conflist::Conflist;
use weft_cni::invoke::Call;
use weft_datapath::{netns, NetNs};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The conflist to wire the pods with.
    #[arg(long, default_value = "examples/10-weft.conflist")]
    conflist: PathBuf,
    /// The weft-cni binary (default: next to this weft binary).
    #[arg(long)]
    plugin: Option<PathBuf>,
}

/// Removes the demo's namespaces and state when dropped.
struct Scratch {
    namespaces: Vec<String>,
    data_dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = netns::delete_named(ns);
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    let plugin = match args.plugin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("weft-cni"),
    };
    if !plugin.is_file() {
        bail!(
            "weft-cni not found at {}; build it with `cargo build --release` or pass --plugin",
            plugin.display()
        );
    }
    let text = std::fs::read_to_string(&args.conflist).with_context(|| {
        format!(
            "reading {} (run from the repository root or pass --conflist)",
            args.conflist.display()
        )
    })?;
    let list =
        Conflist::parse(&text).with_context(|| format!("parsing {}", args.conflist.display()))?;
    let mut conf = list
        .plugin_config(0, &Map::new())
        .context("the conflist has no plugins")?;
    let id = std::process::id();
    let mut scratch = Scratch {
        namespaces: Vec::new(),
        data_dir: std::env::temp_dir().join(format!("weft-demo-{id}")),
    };
    // Keep the demo's IPAM state out of the node's real one.
    conf["ipam"]["dataDir"] = Value::String(scratch.data_dir.display().to_string());

    let node_name = format!("weft-demo-{id}-node");
    let node =
        netns::create_named(&node_name).context("creating the node namespace (are you root?)")?;
    scratch.namespaces.push(node_name.clone());
    println!("node namespace  {node_name}  (bridge, veths and rules live here, not on your host)");

    let mut pods = Vec::new();
    for pod in ["pod-a", "pod-b"] {
        let name = format!("weft-demo-{id}-{pod}");
        netns::create_named(&name)?;
        scratch.namespaces.push(name.clone());
        let path = netns::named_path(&name);
        let container_id = format!("demo{id}{pod}");
        let t = Instant::now();
        let reply = Call {
            container_id: &container_id,
            netns: Some(&path),
            host: Some(&node),
            ..Call::new(&plugin, "ADD")
        }
        .run(&conf)?;
        if !reply.ok() {
            bail!("weft-cni ADD failed for {pod}: {}", reply.stdout.trim());
        }
        let ip = first_address(&reply.json).context("the ADD result has no address")?;
        println!(
            "{pod:<6} {ip:<15} wired by weft-cni ADD in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        pods.push((pod, path, ip, container_id));
    }

    let mut all_ok = true;
    for (from, to) in [(0, 1), (1, 0)] {
        let (name, path, _, _) = &pods[from];
        let (other, _, ip, _) = &pods[to];
        println!("\n$ ping {other} ({ip}) from {name}");
        all_ok &= ping(path, ip)?;
    }

    for (pod, path, _, container_id) in &pods {
        let reply = Call {
            container_id,
            netns: Some(path),
            host: Some(&node),
            ..Call::new(&plugin, "DEL")
        }
        .run(&conf)?;
        if !reply.ok() {
            bail!("weft-cni DEL failed for {pod}: {}", reply.stdout.trim());
        }
    }
    drop(scratch);
    println!(
        "\nremoved both pods (weft-cni DEL) and all demo namespaces; took {:.2} s",
        started.elapsed().as_secs_f64()
    );
    if !all_ok {
        bail!("the pods could not reach each other");
    }
    println!("pods on one node reach each other through weft-cni's bridge.");
    Ok(())
}

fn first_address(result: &Value) -> Option<String> {
    let address = result["ips"].as_array()?.first()?["address"].as_str()?;
    address.split('/').next().map(String::from)
}

fn ping(netns_path: &Path, ip: &str) -> Result<bool> {
    let status = NetNs::open(netns_path)?
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "1", ip])
        .status()
        .context("running ping (install iputils-ping)")?;
    Ok(status.success())
}
