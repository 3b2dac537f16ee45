//! Test harness: a "node" network namespace in which weft-cni runs (so the
//! bridge, veths and nftables rules never touch the host), pod namespaces,
//! and a private IPAM directory — all uniquely named and all removed on
//! drop, also when the test fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use weft_cni::invoke::{Call, Reply};
use weft_datapath::scratch::Namespaces;
use weft_datapath::{netns, NetNs};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_weft-cni");

pub struct Node {
    pub name: String,
    pub ns: NetNs,
    pub data_dir: PathBuf,
    /// The node's namespace and its pods', removed on drop.
    namespaces: Namespaces,
}

impl Node {
    pub fn new(tag: &str) -> Self {
        let mut namespaces = Namespaces::new(&format!("wt-{tag}"));
        let (name, ns) = namespaces.add("node");
        let data_dir = std::env::temp_dir().join(format!("{name}-ipam"));
        Node {
            name,
            ns,
            data_dir,
            namespaces,
        }
    }

    /// A new pod namespace; returns its path (CNI_NETNS).
    pub fn pod(&mut self, tag: &str) -> PathBuf {
        let (name, _) = self.namespaces.add(tag);
        netns::named_path(&name)
    }

    pub fn remove_pod(&mut self, path: &Path) {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        self.namespaces.remove(&name);
    }

    /// A network configuration with this node's data dir; `extra` overrides.
    pub fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0",
            "name": "testnet",
            "type": "weft-cni",
            "bridge": "wtbr0",
            "ipam": {"ranges": [[{"subnet": "10.88.0.0/24"}]], "dataDir": self.data_dir},
        });
        merge(&mut c, extra);
        c
    }

    pub fn call<'a>(&'a self, command: &'a str, id: &'a str, netns: Option<&'a Path>) -> Call<'a> {
        Call {
            container_id: id,
            netns,
            host: Some(&self.ns),
            ..Call::new(Path::new(PLUGIN), command)
        }
    }

    pub fn run(&self, command: &str, id: &str, netns: Option<&Path>, conf: &Value) -> Reply {
        self.call(command, id, netns)
            .run(conf)
            .expect("running weft-cni")
    }

    pub fn add(&self, id: &str, netns: &Path, conf: &Value) -> Reply {
        let r = self.run("ADD", id, Some(netns), conf);
        assert!(r.ok(), "ADD {id} failed: {} {}", r.stdout, r.stderr);
        r
    }

    /// `ip -n <ns> ARGS` output (an independent view of the kernel state).
    pub fn ip(ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(ns)
            .args(args)
            .output()
            .expect("running ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn node_ip(&self, args: &[&str]) -> String {
        Self::ip(&self.name, args)
    }

    /// Names of this node's links.
    pub fn links(&self) -> Vec<String> {
        let v: Value = serde_json::from_str(&self.node_ip(&["-j", "link"])).unwrap_or(Value::Null);
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(String::from))
            .collect()
    }

    /// weft-cni's veths (live `wv…` and retired `wr…`) on this node, after
    /// giving DEL's background reapers up to 10 s to finish.
    pub fn settled_veths(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left: Vec<String> = self
                .links()
                .into_iter()
                .filter(|l| l.starts_with("wv") || l.starts_with("wr"))
                .collect();
            if left.is_empty() || std::time::Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn nft_ruleset(&self) -> String {
        let out = self
            .ns
            .command("nft")
            .args(["list", "ruleset"])
            .output()
            .expect("running nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Reserved addresses in the IPAM state.
    pub fn reserved(&self, network: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data_dir.join(network).join("ips"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Whether `target` answers within 3 s: echo requests every 200 ms until
    /// the first reply (one lone request timed out once in a loaded full
    /// run, right after ADD).
    pub fn ping(netns: &Path, target: &str) -> bool {
        let ns = NetNs::open(netns).unwrap();
        ns.command("ping")
            .args(["-c", "1", "-w", "3", "-i", "0.2", target])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, e) => *b = e,
    }
}

/// The first IPv4 address of a result.
pub fn ipv4_of(result: &Value) -> String {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .find(|a| a.contains('.'))
        .unwrap()
}

/// Runs a call with raw (possibly broken) stdin bytes.
pub fn run_raw(_node: &Node, call: Call, stdin: &[u8]) -> Reply {
    weft_cni::invoke::run_command(call.command(), stdin).unwrap()
}

/// Runs a call with a PATH on which `nft` cannot be found.
pub fn run_without_nft(call: Call, conf: &Value) -> Reply {
    let mut cmd = call.command();
    cmd.env("PATH", "/nonexistent");
    weft_cni::invoke::run_command(cmd, conf.to_string().as_bytes()).unwrap()
}
