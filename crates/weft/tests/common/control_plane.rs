//! Kubernetes' control plane for tests, from the components
//! `scripts/setup.sh --peers` builds: etcd and kube-apiserver inside a
//! network namespace of the test's own (only its loopback is up). The keys
//! and the serving certificate are generated with Debian's openssl into a
//! temporary directory; clients authenticate with a static token of a
//! `system:masters` user and check the serving certificate. Both servers
//! are stopped by PID and the namespace removed, also when the test fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use weft_datapath::scratch::Namespaces;
use weft_datapath::NetNs;

/// Where `scripts/setup.sh --peers` links the built components.
const PEERS_BIN: &str = "/var/cache/weft/peers/bin";
/// The release the peers are pinned to.
pub const KUBERNETES_VERSION: &str = "v1.36.3";
const ETCD_CLIENT_URL: &str = "http://127.0.0.1:2379";
const APISERVER_PORT: u16 = 6443;
const TOKEN: &str = "weft-peers-test-token";
/// Bounds the apiserver's start-up (2.6–5.6 s measured on a 2-core machine).
const READY_WITHIN: Duration = Duration::from_secs(60);

pub fn peer(name: &str) -> PathBuf {
    let path = Path::new(PEERS_BIN).join(name);
    assert!(
        path.exists(),
        "{} is missing: build Kubernetes' components with `./scripts/setup.sh --peers`",
        path.display()
    );
    path
}

/// A scratch network namespace with its loopback up, removed on drop.
struct Scratch {
    name: String,
    ns: NetNs,
    _guard: Namespaces,
}

impl Scratch {
    fn new() -> Scratch {
        let mut guard = Namespaces::new("wtpeers");
        let (name, ns) = guard.add("cp");
        let out = Command::new("ip")
            .args(["-n", &name, "link", "set", "lo", "up"])
            .output()
            .expect("running ip");
        assert!(out.status.success(), "ip link set lo up: {}", text(&out));
        Scratch {
            name,
            ns,
            _guard: guard,
        }
    }
}

/// A server the test started, killed by its PID on drop; its output goes to
/// `<name>.log`, shown when it misbehaves.
struct Server {
    name: &'static str,
    log: PathBuf,
    child: Child,
}

impl Server {
    fn start(ns: &NetNs, dir: &Path, name: &'static str, args: &[String]) -> Server {
        let log = dir.join(format!("{name}.log"));
        let file = fs::File::create(&log).expect("creating the log file");
        let child = ns
            .command(peer(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("cloning the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Server { name, log, child }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl (Debian package openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// A certificate authority, the apiserver's serving certificate for
/// 127.0.0.1 signed by it (clients trust the authority, as they would a
/// cluster's), and the service-account signing key with its public half,
/// which verifies the tokens.
fn generate_keys(dir: &Path) {
    let path = |name: &str| dir.join(name).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &["-days", "1", "-subj", "/CN=weft-test-ca"],
    ]
    .concat();
    openssl(
        &[
            &ca[..],
            &["-keyout", &path("ca.key"), "-out", &path("ca.crt")],
        ]
        .concat(),
    );
    let request = [&["req"][..], &ec, &["-subj", "/CN=127.0.0.1"]].concat();
    openssl(
        &[
            &request[..],
            &[
                "-keyout",
                &path("serving.key"),
                "-out",
                &path("serving.csr"),
            ],
        ]
        .concat(),
    );
    fs::write(
        dir.join("serving.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("writing the certificate extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("serving.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("serving.ext"),
        "-out",
        &path("serving.crt"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-out",
        &path("service-account.key"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &path("service-account.key"),
        "-pubout",
        "-out",
        &path("service-account.pub"),
    ]);
}

fn etcd_args(dir: &Path) -> Vec<String> {
    vec![
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={ETCD_CLIENT_URL}"),
        format!("--advertise-client-urls={ETCD_CLIENT_URL}"),
        "--listen-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-cluster=default=http://127.0.0.1:2380".into(),
    ]
}

fn apiserver_args(dir: &Path) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        format!("--etcd-servers={ETCD_CLIENT_URL}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={APISERVER_PORT}"),
        format!("--cert-dir={}", file("certs")),
        format!("--tls-cert-file={}", file("serving.crt")),
        format!("--tls-private-key-file={}", file("serving.key")),
        format!("--token-auth-file={}", file("tokens.csv")),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-issuer=https://127.0.0.1:{APISERVER_PORT}"),
        format!("--service-account-key-file={}", file("service-account.pub")),
        format!(
            "--service-account-signing-key-file={}",
            file("service-account.key")
        ),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        // As kubeadm sets it: node agents (weft's, kube-proxy) run privileged.
        "--allow-privileged=true".into(),
    ]
}

fn write_kubeconfig(dir: &Path) -> PathBuf {
    write_kubeconfig_for(dir, "kubeconfig", TOKEN)
}

/// A kubeconfig `name` in `dir` for the API server with bearer `token`.
fn write_kubeconfig_for(dir: &Path, name: &str, token: &str) -> PathBuf {
    let kubeconfig = dir.join(name);
    let config = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: peers
  cluster:
    server: https://127.0.0.1:{APISERVER_PORT}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: peers
  context: {{cluster: peers, user: admin}}
current-context: peers
",
        ca = dir.join("ca.crt").display()
    );
    fs::write(&kubeconfig, config).expect("writing the kubeconfig");
    kubeconfig
}

pub fn kubectl_raw(ns: &NetNs, kubeconfig: &Path, path: &str) -> Output {
    ns.command(peer("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout=5s", "get", "--raw", path])
        .output()
        .expect("running kubectl")
}

/// Polls `/readyz` until it answers `ok`; fails with the last answer and the
/// servers' logs when it does not within [`READY_WITHIN`].
fn wait_ready(ns: &NetNs, kubeconfig: &Path, servers: &mut [&mut Server]) -> Duration {
    let start = Instant::now();
    loop {
        for server in servers.iter_mut() {
            server.assert_running();
        }
        let out = kubectl_raw(ns, kubeconfig, "/readyz");
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
            return start.elapsed();
        }
        if start.elapsed() > READY_WITHIN {
            let logs: Vec<String> = servers
                .iter()
                .map(|s| format!("{}:\n{}", s.name, s.log_tail()))
                .collect();
            panic!(
                "kube-apiserver not ready within {READY_WITHIN:?}; last /readyz: {}\n{}",
                text(&out),
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// etcd and kube-apiserver, ready, in their own namespace.
pub struct ControlPlane {
    // Fields drop in order: servers first, then the namespace and files.
    controller_manager: Option<Server>,
    apiserver: Server,
    etcd: Server,
    pub kubeconfig: PathBuf,
    scratch: Scratch,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts both servers and waits until the apiserver is ready.
    pub fn start() -> ControlPlane {
        for name in ["etcd", "kube-apiserver", "kubectl"] {
            peer(name);
        }
        let scratch = Scratch::new();
        let dir = tempfile::tempdir().expect("a temporary directory");
        generate_keys(dir.path());
        fs::write(
            dir.path().join("tokens.csv"),
            format!("{TOKEN},weft-admin,weft-admin,system:masters\n"),
        )
        .expect("writing the token file");
        let kubeconfig = write_kubeconfig(dir.path());
        let mut etcd = Server::start(&scratch.ns, dir.path(), "etcd", &etcd_args(dir.path()));
        let mut apiserver = Server::start(
            &scratch.ns,
            dir.path(),
            "kube-apiserver",
            &apiserver_args(dir.path()),
        );
        let took = wait_ready(&scratch.ns, &kubeconfig, &mut [&mut etcd, &mut apiserver]);
        eprintln!("kube-apiserver ready after {took:?}");
        ControlPlane {
            controller_manager: None,
            apiserver,
            etcd,
            kubeconfig,
            scratch,
            dir,
        }
    }

    /// Starts kube-controller-manager with every controller and node IPAM
    /// handing out /24s of `cluster_cidr`, as kubeadm's
    /// `--pod-network-cidr` sets it up.
    pub fn start_controller_manager(&mut self, cluster_cidr: &str) {
        let dir = self.dir.path();
        let file = |name: &str| dir.join(name).display().to_string();
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--controllers=*".into(),
            "--leader-elect=false".into(),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={cluster_cidr}"),
            "--node-cidr-mask-size=24".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            format!(
                "--service-account-private-key-file={}",
                file("service-account.key")
            ),
            format!("--root-ca-file={}", file("ca.crt")),
            "--bind-address=127.0.0.1".into(),
            format!("--cert-dir={}", file("cm-certs")),
        ];
        let server = Server::start(&self.scratch.ns, dir, "kube-controller-manager", &args);
        self.controller_manager = Some(server);
    }

    /// The namespace the servers listen in (on its loopback).
    pub fn ns(&self) -> &NetNs {
        &self.scratch.ns
    }

    /// That namespace's name (for `ip -n`).
    pub fn ns_name(&self) -> &str {
        &self.scratch.name
    }

    /// `kubectl get --raw PATH` against the apiserver.
    pub fn kubectl_raw(&self, path: &str) -> Output {
        kubectl_raw(&self.scratch.ns, &self.kubeconfig, path)
    }

    /// Stops the apiserver (etcd keeps the cluster's state).
    pub fn stop_apiserver(&mut self) {
        let _ = self.apiserver.child.kill();
        let _ = self.apiserver.child.wait();
    }

    /// Starts the apiserver again and waits until it is ready.
    pub fn restart_apiserver(&mut self) {
        let dir = self.dir.path().to_owned();
        self.apiserver = Server::start(
            &self.scratch.ns,
            &dir,
            "kube-apiserver",
            &apiserver_args(&dir),
        );
        wait_ready(
            &self.scratch.ns,
            &self.kubeconfig,
            &mut [&mut self.etcd, &mut self.apiserver],
        );
    }

    /// Runs kubectl as the admin against the API server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.scratch
            .ns
            .command(peer("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout=10s"])
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// [`ControlPlane::kubectl`] that must succeed; its output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kubeconfig acting as ServiceAccount `namespace/name` (a token
    /// from the TokenRequest API, valid for an hour).
    pub fn kubeconfig_of(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=1h"]);
        write_kubeconfig_for(self.dir.path(), &format!("kubeconfig-{name}"), token.trim())
    }

    /// Runs `work` with weft's Kubernetes source on the admin's
    /// kubeconfig, inside the control plane's namespace, to completion.
    pub fn with_cluster<T, F, Fut>(&self, work: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(weft_cluster::kubernetes::Kubernetes) -> Fut + Send,
        Fut: std::future::Future<Output = T>,
    {
        let kubeconfig = self.kubeconfig.clone();
        self.scratch
            .ns
            .run_in(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async {
                    let cluster =
                        weft_cluster::kubernetes::Kubernetes::from_kubeconfig(&kubeconfig)
                            .await
                            .expect("connecting to the API server");
                    work(cluster).await
                })
            })
            .expect("entering the control plane's namespace")
    }

    /// The namespaces `deploy/weft.yaml` goes in: `weft-system` (a
    /// server-side dry run does not create it) and `kube-node-lease`,
    /// which the API server makes soon after it is ready.
    pub fn prepare_install(&self) {
        self.kubectl_ok(&["create", "namespace", "weft-system"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .kubectl(&["get", "namespace", "kube-node-lease"])
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "no kube-node-lease namespace");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Fails the test with the servers' logs unless both still run.
    pub fn assert_running(&mut self) {
        if let Some(cm) = &mut self.controller_manager {
            cm.assert_running();
        }
        self.etcd.assert_running();
        self.apiserver.assert_running();
    }
}
