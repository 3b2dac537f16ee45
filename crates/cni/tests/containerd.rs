//! weft-cni driven by a real containerd through its CRI, the way kubelet
//! drives it: RunPodSandbox with a hostPort, containers, ExecSync from one
//! pod to the other, the hostPort from the node, then StopPodSandbox and
//! RemovePodSandbox, after which no veth, reservation or nft rule is left.
//!
//! containerd runs inside the test's node namespace (entered with `nsenter`,
//! which keeps the cgroup mounts runc needs) and in a mount namespace of its
//! own with a private /run/netns (the pod namespaces it creates and binds
//! there never show on the host), with every directory
//! and its socket under a per-test temporary directory. There is no image
//! registry: the image is Debian's static busybox, packed by the test as a
//! docker-archive and imported with `ctr`. `scripts/setup.sh` installs
//! containerd, runc and busybox-static and builds `crictl` into
//! [`CRICTL`]; without them the test fails and says what is missing.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Node;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use weft_datapath::{netns, NetNs};

/// Where `scripts/setup.sh` builds crictl (sigs.k8s.io/cri-tools v1.37.0).
const CRICTL: &str = "/var/cache/weft/peers/bin/crictl";
const IMAGE: &str = "weft.test/busybox:1";
const NETWORK: &str = "ctrnet";
const BRIDGE: &str = "wtcbr0";
const GATEWAY: &str = "10.89.0.1";
const HOST_PORT: u16 = 38080;

/// Everything the test needs from the machine, with where it comes from.
fn missing_prerequisites() -> Vec<String> {
    let needs = [
        ("/usr/bin/containerd", "Debian package containerd"),
        ("/usr/bin/ctr", "Debian package containerd"),
        (
            "/usr/bin/containerd-shim-runc-v2",
            "Debian package containerd",
        ),
        ("/usr/sbin/runc", "Debian package runc"),
        ("/bin/busybox", "Debian package busybox-static"),
        (
            "/usr/lib/cni/loopback",
            "Debian package containernetworking-plugins",
        ),
        (
            CRICTL,
            "go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0",
        ),
    ];
    needs
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(path, from)| format!("{path} (from {from})"))
        .collect()
}

/// A containerd serving the CRI inside `node`'s namespace.
struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    fn start(node: &Node) -> Self {
        let dir = std::env::temp_dir().join(format!("{}-containerd", node.name));
        for sub in ["root", "state", "cni-bin", "cni-conf", "logs", "image"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(common::PLUGIN, dir.join("cni-bin/weft-cni")).unwrap();
        // containerd 1.6 always adds the loopback plugin in front of the network.
        std::os::unix::fs::symlink("/usr/lib/cni/loopback", dir.join("cni-bin/loopback")).unwrap();
        fs::write(dir.join("config.toml"), config_toml(&dir)).unwrap();
        fs::write(
            dir.join("cni-conf/10-weft.conflist"),
            conflist(node).to_string(),
        )
        .unwrap();
        fs::write(dir.join("crictl.yaml"), "").unwrap();
        let log = fs::File::create(dir.join("containerd.log")).unwrap();
        // unshare, nsenter and sh all exec, so the child's PID is
        // containerd's. The tmpfs on /run/netns (mounted after nsenter has
        // entered the node) keeps the pod namespaces' files there too.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "nsenter"])
            .arg(format!("--net={}", netns::named_path(&node.name).display()))
            .args([
                "sh",
                "-c",
                "mount -t tmpfs weft-test-netns /run/netns && exec containerd --config \"$0\"",
            ])
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let mut c = Containerd { dir, child };
        c.wait_until_serving();
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("containerd exited ({status}):\n{}", self.log_tail());
            }
            let ready = self.socket().exists()
                && self.run_ctr(&["version"]).is_ok_and(|o| o.status.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not serve within 20 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run_ctr(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
    }

    fn import_image(&self) {
        let tarball = build_image(&self.dir.join("image"));
        let out = self
            .run_ctr(&[
                "images",
                "import",
                "--snapshotter",
                "native",
                tarball.to_str().unwrap(),
            ])
            .unwrap();
        assert!(out.status.success(), "ctr images import: {}", stderr(&out));
    }

    fn crictl_output(&self, args: &[&str]) -> Output {
        let endpoint = format!("unix://{}", self.socket().display());
        Command::new(CRICTL)
            .arg("--config")
            .arg(self.dir.join("crictl.yaml"))
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(["--timeout", "60s"])
            .args(args)
            .output()
            .expect("running crictl")
    }

    /// Runs crictl; its trimmed stdout, or a failure with both its stderr
    /// and containerd's log.
    fn crictl(&self, args: &[&str]) -> String {
        let out = self.crictl_output(args);
        assert!(
            out.status.success(),
            "crictl {args:?} failed: {}\ncontainerd log:\n{}",
            stderr(&out),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn write_json(&self, name: &str, value: &Value) -> String {
        let path = self.dir.join(name);
        fs::write(&path, value.to_string()).unwrap();
        path.display().to_string()
    }

    /// RunPodSandbox, then one container serving "hello-from-<pod>" on
    /// 8080; returns (sandbox id, container id, pod IP).
    fn run_pod(&self, name: &str, port_mappings: Value) -> (String, String, String) {
        let sandbox = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "attempt": 0},
            "hostname": name,
            "log_directory": self.dir.join("logs").join(name),
            "port_mappings": port_mappings,
            "linux": {"security_context": {"namespace_options": {"network": 0, "pid": 1, "ipc": 0}}},
        });
        let sandbox_file = self.write_json(&format!("{name}-sandbox.json"), &sandbox);
        let pod = self.crictl(&["runp", &sandbox_file]);
        let container = json!({
            "metadata": {"name": "web"},
            "image": {"image": IMAGE},
            "command": ["/bin/busybox", "sh", "-c",
                "echo hello-from-$HOSTNAME > /tmp/index.html && exec /bin/busybox httpd -f -p 8080 -h /tmp"],
            "log_path": "web.log",
            "linux": {},
        });
        let container_file = self.write_json(&format!("{name}-web.json"), &container);
        let id = self.crictl(&["create", &pod, &container_file, &sandbox_file]);
        let id = id.lines().last().unwrap_or_default().to_string();
        self.crictl(&["start", &id]);
        let status: Value = serde_json::from_str(&self.crictl(&["inspectp", &pod])).unwrap();
        let ip = status["status"]["network"]["ip"]
            .as_str()
            .unwrap_or_else(|| panic!("pod {name} has no IP: {status}"))
            .to_string();
        (pod, id, ip)
    }

    /// ExecSync in `container`: an HTTP GET of `url`, retried for up to 5 s
    /// while the server starts.
    fn fetch_from(&self, container: &str, url: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // No wget -T: busybox 1.35's wget crashes with it; crictl's
            // --timeout bounds the call instead.
            let out = self.crictl_output(&[
                "exec",
                "-s",
                "--timeout",
                "10",
                container,
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "-",
                url,
            ]);
            let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() || Instant::now() > deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Best effort when the test failed part-way: sandboxes first (their
        // CNI DEL and shims), then containerd, then any shim it left.
        let _ = self.crictl_output(&["rmp", "--all", "--force"]);
        // SAFETY: a plain signal to the containerd this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in processes_naming(&self.socket()) {
            // SAFETY: a plain signal to a shim of this test's containerd.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// PIDs of processes whose command line names `path` (this test's shims).
fn processes_naming(path: &Path) -> Vec<i32> {
    let needle = path.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  disable_cgroup = true
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#
    )
}

fn conflist(node: &Node) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [{
            "type": "weft-cni",
            "bridge": BRIDGE,
            "ipam": {"ranges": [[{"subnet": "10.89.0.0/24"}]], "dataDir": node.data_dir},
            "capabilities": {"portMappings": true},
        }],
    })
}

/// A docker-archive of one layer holding busybox as `/bin/busybox` (also
/// `/bin/sh`), whose entrypoint sleeps: the sandbox ("pause") image and
/// the containers' image at once.
fn build_image(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    for sub in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
        fs::create_dir_all(layer.join(sub)).unwrap();
    }
    fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", layer.join("bin/sh")).unwrap();
    tar(&layer, &dir.join("layer.tar"), &["."]);
    let digest: String = Sha256::digest(fs::read(dir.join("layer.tar")).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
    });
    fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let manifest = json!([{"Config": "config.json", "RepoTags": [IMAGE], "Layers": ["layer.tar"]}]);
    fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let tarball = dir.join("image.tar");
    tar(
        dir,
        &tarball,
        &["manifest.json", "config.json", "layer.tar"],
    );
    tarball
}

fn tar(dir: &Path, out: &Path, members: &[&str]) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(members)
        .status()
        .expect("running tar");
    assert!(status.success(), "tar -cf {}", out.display());
}

/// An HTTP GET from inside the node's namespace; the body, if any.
fn http_get_in(node: &Node, addr: &str) -> Option<String> {
    let target: SocketAddr = addr.parse().unwrap();
    let ns = NetNs::open(netns::named_path(&node.name)).unwrap();
    let stream = ns
        .run_in(|| TcpStream::connect_timeout(&target, Duration::from_secs(3)))
        .unwrap();
    let mut stream = stream.ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn hostport_rules(node: &Node) -> bool {
    let rules = node.nft_ruleset();
    rules.contains("chain hp-") || rules.contains(&HOST_PORT.to_string())
}

#[test]
fn containerd_cri_runs_pods_on_weft_cni_and_tears_them_down_cleanly() {
    let missing = missing_prerequisites();
    assert!(
        missing.is_empty(),
        "the containerd test cannot run: missing {}; run scripts/setup.sh as root",
        missing.join(", ")
    );
    let node = Node::new("ctrd");
    assert!(Command::new("ip")
        .args(["-n", &node.name, "link", "set", "lo", "up"])
        .status()
        .unwrap()
        .success());
    let containerd = Containerd::start(&node);
    containerd.import_image();

    let mapping = json!([{"protocol": 0, "container_port": 8080, "host_port": HOST_PORT}]);
    let (pod_a, web_a, ip_a) = containerd.run_pod("pod-a", mapping);
    let (pod_b, web_b, ip_b) = containerd.run_pod("pod-b", json!([]));
    assert_ne!(ip_a, ip_b);

    // ExecSync between pods: each reaches the other's IP.
    assert_eq!(
        containerd.fetch_from(&web_b, &format!("http://{ip_a}:8080/index.html")),
        "hello-from-pod-a"
    );
    assert_eq!(
        containerd.fetch_from(&web_a, &format!("http://{ip_b}:8080/index.html")),
        "hello-from-pod-b"
    );
    // The hostPort, from the node and from the other pod (hairpin via the bridge).
    let from_node = http_get_in(&node, &format!("{GATEWAY}:{HOST_PORT}"));
    assert!(
        from_node
            .as_deref()
            .is_some_and(|a| a.contains("hello-from-pod-a")),
        "hostPort {HOST_PORT} from the node answered {from_node:?}"
    );
    assert_eq!(
        containerd.fetch_from(&web_b, &format!("http://{GATEWAY}:{HOST_PORT}/index.html")),
        "hello-from-pod-a"
    );
    assert_eq!(node.reserved(NETWORK).len(), 2);

    for pod in [&pod_a, &pod_b] {
        containerd.crictl(&["stopp", pod]);
        containerd.crictl(&["rmp", pod]);
    }
    assert!(containerd.crictl(&["pods", "-q"]).is_empty());
    assert!(
        node.reserved(NETWORK).is_empty(),
        "addresses left reserved: {:?}",
        node.reserved(NETWORK)
    );
    assert!(
        node.settled_veths().is_empty(),
        "veths left: {:?}",
        node.links()
    );
    assert!(
        !hostport_rules(&node),
        "hostPort rules left:\n{}",
        node.nft_ruleset()
    );
    assert!(
        http_get_in(&node, &format!("{GATEWAY}:{HOST_PORT}")).is_none(),
        "the hostPort still answers after RemovePodSandbox"
    );
}
