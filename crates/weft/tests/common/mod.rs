//! The harness of the `weft lab` end-to-end tests: a lab driven through
//! the `weft` binary as a user runs it, under a name unique to the test
//! (`<tag><pid>`), removed by `Drop` even when the test fails. Each test
//! file uses part of it.
#![allow(dead_code)]

pub mod control_plane;
pub mod flannel;
pub mod kube_node;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_datapath::NetNs;

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");
pub const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/pods.yaml");

/// What holds a lab's cluster state: the suites that hold in both run in
/// both (`#[rstest]` cases), the others name theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Kubernetes,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Embedded => "embedded",
            Mode::Kubernetes => "kubernetes",
        }
    }
}

pub struct Lab {
    pub name: String,
    pub mode: Mode,
}

impl Lab {
    pub fn up(tag: &str, nodes: u32, backend: &str) -> Lab {
        Lab::up_in(Mode::Embedded, tag, nodes, backend)
    }

    /// A lab of `nodes` on `backend` whose control plane is `mode`'s.
    pub fn up_in(mode: Mode, tag: &str, nodes: u32, backend: &str) -> Lab {
        let nodes = nodes.to_string();
        Lab::up_with_in(mode, tag, &["--nodes", &nodes, "--backend", backend])
    }

    /// `weft lab up ARGS` under the name `<tag><pid>`.
    pub fn up_with(tag: &str, args: &[&str]) -> Lab {
        Lab::up_with_in(Mode::Embedded, tag, args)
    }

    /// `weft lab up ARGS` in `mode`, named `<tag>[k]<pid>`.
    pub fn up_with_in(mode: Mode, tag: &str, args: &[&str]) -> Lab {
        Lab::up_with_env_in(mode, tag, args, &[])
    }

    /// The same with extra environment for `weft lab up` (and so for the
    /// agents it starts).
    pub fn up_with_env(tag: &str, args: &[&str], env: &[(&str, &str)]) -> Lab {
        Lab::up_with_env_in(Mode::Embedded, tag, args, env)
    }

    pub fn up_with_env_in(mode: Mode, tag: &str, args: &[&str], env: &[(&str, &str)]) -> Lab {
        let lab = Lab::named_in(mode, tag);
        let mut all = vec!["up", "--control-plane", mode.flag()];
        all.extend_from_slice(args);
        let out = lab.weft_env(&all, env);
        assert!(
            out.status.success(),
            "lab up failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        lab
    }

    /// A handle on the lab `<tag><pid>` without creating it.
    pub fn named(tag: &str) -> Lab {
        Lab::named_in(Mode::Embedded, tag)
    }

    /// Kubernetes-mode labs end their tag with `k`, so a test's two
    /// cases run side by side.
    pub fn named_in(mode: Mode, tag: &str) -> Lab {
        assert!(tag.len() <= 6);
        let k = if mode == Mode::Kubernetes { "k" } else { "" };
        Lab {
            name: format!("{tag}{k}{}", std::process::id() % 100_000),
            mode,
        }
    }

    /// kubectl of the peers cache as the lab's admin (Kubernetes mode).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let kubeconfig = self.ok(&["kubeconfig"]);
        Command::new(weft_lab::control_plane::peer("kubectl").unwrap())
            .arg("--kubeconfig")
            .arg(kubeconfig.trim())
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// [`Lab::kubectl`] that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        succeeded(&format!("kubectl {args:?}"), self.kubectl(args))
    }

    /// The names of the pods labelled `app=<app>`, sorted (a Deployment's
    /// pods: `web-0…` in the embedded mode, `web-<hash>-<id>` on Kubernetes).
    pub fn app_pods(&self, app: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .pods()
            .iter()
            .filter(|p| p["metadata"]["labels"]["app"] == app)
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    }

    pub fn weft(&self, args: &[&str]) -> Output {
        self.weft_env(args, &[])
    }

    pub fn weft_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(WEFT);
        cmd.arg("lab")
            .arg(args[0])
            .args(["--name", &self.name])
            .args(&args[1..]);
        cmd.env("RUST_BACKTRACE", "0")
            .envs(env.iter().copied())
            .output()
            .expect("running weft")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        succeeded(&format!("weft lab {args:?}"), self.weft(args))
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("JSON output")
    }

    pub fn pods(&self) -> Vec<Value> {
        self.json(&["get", "pods", "-A", "-o", "json"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The pod named `name` (in any namespace), as `get pods -o json`
    /// shows it; panics if there is none.
    pub fn pod(&self, name: &str) -> Value {
        self.pods()
            .into_iter()
            .find(|p| p["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The pod's network namespace: its node's for hostNetwork pods,
    /// else its own, named after its UID (as the lab's kubelet names it).
    pub fn pod_netns(&self, pod: &str) -> NetNs {
        let p = self.pod(pod);
        let name = if p["spec"]["hostNetwork"] == true {
            self.node_ns(p["spec"]["nodeName"].as_str().unwrap())
        } else {
            let uid = p["metadata"]["uid"].as_str().unwrap();
            format!("wl-{}-pod-{}", self.name, &uid[..uid.len().min(12)])
        };
        NetNs::open(weft_datapath::netns::named_path(&name)).unwrap()
    }

    pub fn pod_ip(&self, pod: &str) -> String {
        let p = self
            .pods()
            .into_iter()
            .find(|p| p["metadata"]["name"] == pod)
            .expect("pod exists");
        p["status"]["podIP"].as_str().unwrap().to_string()
    }

    pub fn node_ns(&self, node: &str) -> String {
        format!("wl-{}-{node}", self.name)
    }

    pub fn node_ip_cmd(&self, node: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(self.node_ns(node))
            .args(args)
            .output()
            .unwrap();
        text(&out.stdout)
    }

    /// The Service proxy's table in a node, as `nft list table` prints it.
    pub fn node_nft(&self, node: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(node)])
            .args(["nft", "list", "table", "ip", "weft-proxy"])
            .output()
            .unwrap();
        text(&out.stdout)
    }

    /// The names of the chains in a node's proxy table.
    pub fn node_nft_chains(&self, node: &str) -> Vec<String> {
        self.node_nft(node)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("chain "))
            .map(|l| l.trim_end_matches(" {").to_string())
            .collect()
    }

    /// Runs a command in the external client's namespace; its stdout.
    pub fn external_cmd(&self, args: &[&str]) -> String {
        text(
            &self
                .ok(&[&["exec", "--external", "--"], args].concat())
                .into_bytes(),
        )
    }

    /// The MAC address the external client resolved `ip` to, if any.
    pub fn external_neighbour(&self, ip: &str) -> Option<String> {
        let line = self.external_cmd(&["ip", "neigh", "show", ip]);
        let mut words = line.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(String::from)
    }

    /// `weft lab ARGS` that must fail; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.weft(args);
        assert!(
            !out.status.success(),
            "weft lab {args:?} should have failed:\n{}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// `weft lab apply -f -` with `manifest` on stdin; its output.
    pub fn apply(&self, manifest: &str) -> Output {
        self.apply_started(manifest)
            .wait_with_output()
            .expect("running weft")
    }

    /// `weft lab apply -f -` with `manifest` written to its stdin, still
    /// running (for tests that race it or kill it).
    pub fn apply_started(&self, manifest: &str) -> std::process::Child {
        let mut child = Command::new(WEFT)
            .args(["lab", "apply", "--name", &self.name, "-f", "-"])
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running weft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(manifest.as_bytes())
            .expect("writing the manifest");
        child
    }

    /// `path` of the agent's health server inside `node`: (status, body).
    pub fn agent_http(
        &self,
        node: &str,
        path: &str,
    ) -> Result<(u16, String), weft_lab::probe::ProbeError> {
        let ns = NetNs::open(weft_datapath::netns::named_path(&self.node_ns(node))).unwrap();
        ns.run_in(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(weft_lab::probe::http_get(
                "127.0.0.1:10254".parse().unwrap(),
                path,
                Duration::from_secs(1),
            ))
        })
        .unwrap()
    }

    /// `apply` that must succeed; its stdout.
    pub fn apply_ok(&self, manifest: &str) -> String {
        let out = self.apply(manifest);
        assert!(
            out.status.success(),
            "apply failed:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `apply` that must fail; its stderr.
    pub fn apply_fails(&self, manifest: &str) -> String {
        let out = self.apply(manifest);
        assert!(
            !out.status.success(),
            "apply should have failed:\n{}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// `weft lab probe` over HTTP `path`: (outcome, answer) per attempt.
    pub fn probe_http(
        &self,
        from: &str,
        to: &str,
        count: u32,
        path: &str,
    ) -> Vec<(String, String)> {
        self.probe_with(from, to, count, &["--http-path", path])
    }

    /// `count` UDP probes (netexec's `hostname` command), as
    /// [`Lab::probe_http`].
    pub fn probe_udp(&self, from: &str, to: &str, count: u32) -> Vec<(String, String)> {
        self.probe_with(from, to, count, &["--protocol", "udp"])
    }

    /// `weft lab probe` with `extra` arguments: each attempt's outcome and
    /// answer.
    fn probe_with(
        &self,
        from: &str,
        to: &str,
        count: u32,
        extra: &[&str],
    ) -> Vec<(String, String)> {
        let count = count.to_string();
        let mut args = vec![
            "probe", "--from", from, "--to", to, "--count", &count, "-o", "json",
        ];
        args.extend_from_slice(extra);
        let out = self.weft(&args);
        let v: Value = serde_json::from_str(&text(&out.stdout))
            .unwrap_or_else(|_| panic!("probe JSON: {}{}", text(&out.stdout), text(&out.stderr)));
        v["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| {
                let field = |name: &str| r[name].as_str().unwrap_or_default().to_string();
                (field("outcome"), field("answer"))
            })
            .collect()
    }

    /// A node's InternalIP.
    pub fn node_ip(&self, node: &str) -> String {
        self.json(&["get", "nodes", "-o", "json"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["metadata"]["name"] == node)
            .and_then(|n| n["status"]["addresses"][0]["address"].as_str())
            .map(String::from)
            .expect("node address")
    }

    pub fn full_mesh(&self) -> Value {
        let out = self.weft(&["probe", "-o", "json"]);
        let v: Value = serde_json::from_str(&text(&out.stdout)).expect("probe JSON");
        assert!(
            v["allOk"].as_bool().unwrap(),
            "not all pods reach each other: {v:#}"
        );
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(WEFT)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

/// The stdout of `what`, which must have succeeded.
pub fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A VXLAN lease request of `node` at public address `ip` (its VTEP MAC
/// made from the address), for any subnet of 10.244.0.0/16.
pub fn lease_request(node: &str, ip: &str) -> weft_cluster::leases::LeaseRequest {
    use weft_cluster::leases::{BackendData, LeaseRequest, SubnetRange};
    let vtep_mac = format!("0a:58:c6:12:00:{}", &ip[ip.len() - 2..]);
    LeaseRequest {
        node: node.into(),
        public_ip: ip.parse().unwrap(),
        backend: serde_json::json!({"vtepMAC": vtep_mac}),
        backend_data: BackendData::Vxlan { vni: 1, vtep_mac },
        ttl: Duration::from_secs(86400),
        allowed: SubnetRange {
            min: "10.244.0.0/24".parse().unwrap(),
            max: "10.244.255.0/24".parse().unwrap(),
        },
    }
}
