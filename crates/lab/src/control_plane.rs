//! Kubernetes' own control plane on one machine, from the components
//! `scripts/setup.sh --peers` builds: etcd and kube-apiserver (and, on
//! request, kube-controller-manager and kube-scheduler) inside a network
//! namespace of the caller's naming, with only its loopback up. The keys
//! and certificates are generated with openssl into a temporary directory;
//! the admin authenticates with a static token of a `system:masters` user,
//! a node's kubelet with a client certificate for `system:node:<name>`
//! (the Node authorizer and NodeRestriction apply, as with kubeadm), and
//! clients check the serving certificate against the generated authority.
//!
//! This module owns the servers' lifecycle: they are killed by PID and the
//! namespace and files removed when the [`ControlPlane`] is dropped. The
//! Kubernetes test suites and `weft-bench services --kube` start it; how the
//! namespace is reached from elsewhere (links, routes) is the caller's.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use weft_datapath::{netns, NetNs, NetNsError, Netlink, NetlinkError};

/// Where `scripts/setup.sh --peers` links the built components.
pub const PEERS_BIN: &str = "/var/cache/weft/peers/bin";
/// Where it puts the reference CNI plugins (containernetworking/plugins).
pub const PEERS_CNI: &str = "/var/cache/weft/peers/cni";
/// Where it links the CRDs it fetches (from their Go modules).
pub const PEERS_CRDS: &str = "/var/cache/weft/peers/crds";
/// ClusterNetworkPolicy's CRD (`policy.networking.k8s.io/v1beta1`, from
/// sigs.k8s.io/network-policy-api v0.3.0's standard channel).
pub const CLUSTER_NETWORK_POLICY_CRD: &str = "policy.networking.k8s.io_clusternetworkpolicies.yaml";
/// The release the peers are pinned to.
pub const KUBERNETES_VERSION: &str = "v1.36.3";
/// The apiserver's port.
pub const APISERVER_PORT: u16 = 6443;
/// The Services' range the apiserver allocates ClusterIPs from.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Where etcd serves its clients, in the control plane's namespace.
pub const ETCD_CLIENT_URL: &str = "http://127.0.0.1:2379";
const ADMIN_TOKEN: &str = "weft-peers-admin-token";
/// Bounds the apiserver's start-up (2.6–5.6 s measured on a 2-core machine).
const READY_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{} is missing: build Kubernetes' components with `./scripts/setup.sh --peers`", .0.display())]
    MissingPeer(PathBuf),
    #[error("{} is missing: fetch it with `./scripts/setup.sh --peers`", .0.display())]
    MissingCrd(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} failed: {output}")]
    Failed { what: String, output: String },
    #[error("{name} exited ({status}):\n{log}")]
    Exited {
        name: &'static str,
        status: ExitStatus,
        log: String,
    },
    #[error("kube-apiserver not ready within {within:?}; last /readyz: {last}\n{logs}")]
    NotReady {
        within: Duration,
        last: String,
        logs: String,
    },
    #[error(transparent)]
    Netns(#[from] NetNsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

type Result<T> = std::result::Result<T, ControlPlaneError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ControlPlaneError {
    let what = what.into();
    move |source| ControlPlaneError::Io { what, source }
}

/// The path of peer component `name`, if it was built.
pub fn peer(name: &str) -> Result<PathBuf> {
    cached(PEERS_BIN, name, ControlPlaneError::MissingPeer)
}

/// The reference CNI plugin `name` (bridge, host-local, portmap,
/// loopback) that `scripts/setup.sh --peers` built; its folder is their
/// CNI_PATH.
pub fn reference_cni_plugin(name: &str) -> Result<PathBuf> {
    cached(PEERS_CNI, name, ControlPlaneError::MissingPeer)
}

/// The path of the CRD file `name` (e.g. [`CLUSTER_NETWORK_POLICY_CRD`]),
/// if it was fetched.
pub fn peer_crd(name: &str) -> Result<PathBuf> {
    cached(PEERS_CRDS, name, ControlPlaneError::MissingCrd)
}

/// File `name` of the peers' cache folder `dir`, or `missing` of its path.
fn cached(dir: &str, name: &str, missing: fn(PathBuf) -> ControlPlaneError) -> Result<PathBuf> {
    let path = Path::new(dir).join(name);
    match path.exists() {
        true => Ok(path),
        false => Err(missing(path)),
    }
}

/// A command's stdout and stderr, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// How to start the control plane.
#[derive(Debug, Clone)]
pub struct Config {
    /// The network namespace to create for the servers (it must not exist).
    pub namespace: String,
    /// Where the apiserver listens: its namespace's loopback by default;
    /// `0.0.0.0` to be reachable over links the caller adds.
    pub bind: Ipv4Addr,
    /// Addresses besides 127.0.0.1 the serving certificate is valid for
    /// (the ones clients in other namespaces dial).
    pub serving_addresses: Vec<Ipv4Addr>,
    /// Have the kernel kill the servers when the thread that started them
    /// exits (PR_SET_PDEATHSIG), so they cannot outlive a process that was
    /// killed outright. Only for callers that keep that thread to the end.
    pub die_with_thread: bool,
    /// Where the control plane's directory (keys, etcd's data, logs) is
    /// made, named after the namespace.
    pub parent_dir: PathBuf,
}

impl Config {
    /// Loopback only, in namespace `namespace`.
    pub fn new(namespace: impl Into<String>) -> Config {
        Config {
            namespace: namespace.into(),
            bind: Ipv4Addr::LOCALHOST,
            serving_addresses: Vec::new(),
            die_with_thread: false,
            parent_dir: std::env::temp_dir(),
        }
    }

    fn serving(&self) -> Serving {
        Serving {
            bind: self.bind,
            advertise: Ipv4Addr::LOCALHOST,
            service_cidr: SERVICE_CIDR.into(),
        }
    }
}

/// The control plane's namespace, removed on drop.
struct Namespace {
    name: String,
    ns: NetNs,
}

impl Namespace {
    fn create(name: &str) -> Result<Namespace> {
        let ns = netns::create_named(name)?;
        let created = Namespace {
            name: name.to_string(),
            ns,
        };
        loopback_up(&created.ns)?;
        Ok(created)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = netns::delete_named(&self.name);
    }
}

pub(crate) fn loopback_up(ns: &NetNs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("a runtime for netlink"))?;
    rt.block_on(async {
        let nl = Netlink::connect_in(ns)?;
        if let Some(lo) = nl.link("lo").await? {
            nl.set_up(lo.index).await?;
        }
        Ok(())
    })
}

/// A server we started, killed by its PID on drop; its output goes to
/// `<name>.log`, quoted when it misbehaves.
struct Server {
    name: &'static str,
    log: PathBuf,
    child: Child,
}

impl Server {
    fn start(
        ns: &NetNs,
        dir: &Path,
        name: &'static str,
        args: &[String],
        die_with_thread: bool,
    ) -> Result<Server> {
        let log = dir.join(format!("{name}.log"));
        let file = fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let mut cmd = ns.command(peer(name)?);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(io("cloning the log file"))?)
            .stderr(file);
        if die_with_thread {
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(io(format!("starting {name}")))?;
        Ok(Server { name, log, child })
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(ControlPlaneError::Exited {
                name: self.name,
                status,
                log: self.log_tail(),
            }),
            _ => Ok(()),
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(io("running openssl (Debian package openssl)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ControlPlaneError::Failed {
            what: format!("openssl {args:?}"),
            output: text(&out),
        })
    }
}

/// A certificate authority, the apiserver's serving certificate for
/// 127.0.0.1 and `addresses` signed by it (clients trust the authority, as
/// they would a cluster's), and the service-account signing key with its
/// public half, which verifies the tokens.
pub(crate) fn generate_keys(dir: &Path, addresses: &[Ipv4Addr]) -> Result<()> {
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
        &["-days", VALID_DAYS, "-subj", "/CN=weft-ca"],
    ]
    .concat();
    openssl(
        &[
            &ca[..],
            &["-keyout", &path("ca.key"), "-out", &path("ca.crt")],
        ]
        .concat(),
    )?;
    let names: Vec<String> = std::iter::once(Ipv4Addr::LOCALHOST)
        .chain(addresses.iter().copied())
        .map(|a| format!("IP:{a}"))
        .collect();
    let extensions = format!("subjectAltName={}\n{SERVER_AUTH}", names.join(","));
    issue(dir, "serving", "/CN=127.0.0.1", &extensions)?;
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-out",
        &path("service-account.key"),
    ])?;
    openssl(&[
        "pkey",
        "-in",
        &path("service-account.key"),
        "-pubout",
        "-out",
        &path("service-account.pub"),
    ])
}

/// How long the authority and certificates are valid (a lab may run
/// for long).
const VALID_DAYS: &str = "365";

/// What a serving certificate may do.
const SERVER_AUTH: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n";
/// What a client certificate may do.
const CLIENT_AUTH: &str =
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n";

/// A key `<stem>.key` and a certificate `<stem>.crt` for `subject` with
/// `extensions`, signed by the authority in `dir`.
fn issue(dir: &Path, stem: &str, subject: &str, extensions: &str) -> Result<()> {
    let path = |ext: &str| dir.join(format!("{stem}.{ext}")).display().to_string();
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        &path("key"),
        "-out",
        &path("csr"),
    ])?;
    fs::write(path("ext"), extensions).map_err(io("writing the certificate extensions"))?;
    let authority = |name: &str| dir.join(name).display().to_string();
    let serial = format!("0x{}", crate::objects::random_uid().replace('-', ""));
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("csr"),
        "-CA",
        &authority("ca.crt"),
        "-CAkey",
        &authority("ca.key"),
        // A random serial: kubelets of several nodes issue theirs at once,
        // and `-CAcreateserial` would race on the shared serial file.
        "-set_serial",
        &serial,
        "-days",
        VALID_DAYS,
        "-extfile",
        &path("ext"),
        "-out",
        &path("crt"),
    ])
}

/// etcd's arguments: clients served on `bind` (and always on 127.0.0.1,
/// where the apiserver reaches it), advertised as 127.0.0.1.
pub(crate) fn etcd_args(dir: &Path, bind: Ipv4Addr) -> Vec<String> {
    let listen = match bind {
        Ipv4Addr::LOCALHOST => ETCD_CLIENT_URL.to_string(),
        other => format!("http://{other}:2379"),
    };
    vec![
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={listen}"),
        format!("--advertise-client-urls={ETCD_CLIENT_URL}"),
        "--listen-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-cluster=default=http://127.0.0.1:2380".into(),
    ]
}

/// Where the apiserver listens and what it serves.
pub(crate) struct Serving {
    pub bind: Ipv4Addr,
    /// The address the `kubernetes` Service's endpoints name.
    pub advertise: Ipv4Addr,
    pub service_cidr: String,
}

pub(crate) fn apiserver_args(dir: &Path, serving: &Serving) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        format!("--etcd-servers={ETCD_CLIENT_URL}"),
        format!("--bind-address={}", serving.bind),
        format!("--advertise-address={}", serving.advertise),
        format!("--secure-port={APISERVER_PORT}"),
        format!("--cert-dir={}", file("certs")),
        format!("--tls-cert-file={}", file("serving.crt")),
        format!("--tls-private-key-file={}", file("serving.key")),
        format!("--token-auth-file={}", file("tokens.csv")),
        // As kubeadm: nodes may touch only their own Node, Lease and the
        // pods bound to them (the Node authorizer and NodeRestriction),
        // everyone else by RBAC; nodes authenticate with certificates.
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        format!("--client-ca-file={}", file("ca.crt")),
        format!("--service-account-issuer=https://127.0.0.1:{APISERVER_PORT}"),
        format!("--service-account-key-file={}", file("service-account.pub")),
        format!(
            "--service-account-signing-key-file={}",
            file("service-account.key")
        ),
        format!("--service-cluster-ip-range={}", serving.service_cidr),
        // As kubeadm sets it: node agents (weft's, kube-proxy) run privileged.
        "--allow-privileged=true".into(),
    ]
}

/// What node IPAM hands out: `node_mask`-sized blocks of `cluster_cidr`
/// (kubeadm's `--pod-network-cidr`).
pub(crate) struct NodeIpam {
    pub cluster_cidr: String,
    pub node_mask: u8,
    pub service_cidr: String,
}

/// kube-controller-manager with every controller and node IPAM, as the
/// admin of `kubeconfig`.
pub(crate) fn controller_manager_args(
    dir: &Path,
    kubeconfig: &Path,
    ipam: &NodeIpam,
) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--controllers=*".into(),
        "--leader-elect=false".into(),
        "--allocate-node-cidrs=true".into(),
        format!("--cluster-cidr={}", ipam.cluster_cidr),
        format!("--node-cidr-mask-size={}", ipam.node_mask),
        format!("--service-cluster-ip-range={}", ipam.service_cidr),
        format!(
            "--service-account-private-key-file={}",
            file("service-account.key")
        ),
        format!("--root-ca-file={}", file("ca.crt")),
        "--bind-address=127.0.0.1".into(),
        format!("--cert-dir={}", file("cm-certs")),
    ]
}

/// kube-scheduler as the admin of `kubeconfig`.
pub(crate) fn scheduler_args(kubeconfig: &Path) -> Vec<String> {
    let kubeconfig = kubeconfig.display();
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
    ]
}

/// A kubeconfig for the apiserver at `server` (`https://…`) trusting the
/// authority `ca`, whose user is `credentials` (the YAML of a kubeconfig
/// `user`).
pub(crate) fn kubeconfig_text(server: &str, ca: &Path, credentials: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: weft
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: user
  user:
    {credentials}
contexts:
- name: weft
  context: {{cluster: weft, user: user}}
current-context: weft
",
        ca = ca.display()
    )
}

/// A client certificate for the kubelet of `node` (`system:node:<node>`
/// in group `system:nodes`), signed by the authority in `dir`, so the
/// Node authorizer and NodeRestriction apply to it as to a real kubelet;
/// returns the kubeconfig `user` naming it.
pub(crate) fn node_credentials(dir: &Path, node: &str) -> Result<String> {
    weft_validation::names::dns1123_subdomain(node).map_err(|reason| {
        ControlPlaneError::Failed {
            what: format!("a certificate for node {node:?}"),
            output: reason,
        }
    })?;
    client_credentials(
        dir,
        &format!("node-{node}"),
        &format!("/O=system:nodes/CN=system:node:{node}"),
    )
}

/// A client certificate `<stem>.crt` for `subject`, signed by the
/// authority in `dir`; the kubeconfig `user` naming it.
pub(crate) fn client_credentials(dir: &Path, stem: &str, subject: &str) -> Result<String> {
    issue(dir, stem, subject, CLIENT_AUTH)?;
    let path = |ext: &str| dir.join(format!("{stem}.{ext}")).display().to_string();
    Ok(format!(
        "client-certificate: {}\n    client-key: {}",
        path("crt"),
        path("key")
    ))
}

/// `kubectl get --raw PATH` inside `ns`.
pub fn kubectl_raw(ns: &NetNs, kubeconfig: &Path, path: &str) -> Result<Output> {
    ns.command(peer("kubectl")?)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--request-timeout=5s", "get", "--raw", path])
        .output()
        .map_err(io("running kubectl"))
}

/// etcd and kube-apiserver, ready, in their own namespace.
pub struct ControlPlane {
    // Fields drop in order: servers first, then the namespace and files.
    scheduler: Option<Server>,
    controller_manager: Option<Server>,
    apiserver: Server,
    etcd: Server,
    kubeconfig: PathBuf,
    config: Config,
    namespace: Namespace,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts both servers and waits until the apiserver is ready; how
    /// long that took is [`ControlPlane::start`]'s second value.
    pub fn start(config: Config) -> Result<(ControlPlane, Duration)> {
        for name in ["etcd", "kube-apiserver", "kubectl"] {
            peer(name)?;
        }
        let namespace = Namespace::create(&config.namespace)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", config.namespace))
            .tempdir_in(&config.parent_dir)
            .map_err(io(format!(
                "a temporary directory in {}",
                config.parent_dir.display()
            )))?;
        generate_keys(dir.path(), &config.serving_addresses)?;
        fs::write(
            dir.path().join("tokens.csv"),
            format!("{ADMIN_TOKEN},weft-admin,weft-admin,system:masters\n"),
        )
        .map_err(io("writing the token file"))?;
        let etcd = Server::start(
            &namespace.ns,
            dir.path(),
            "etcd",
            &etcd_args(dir.path(), config.bind),
            config.die_with_thread,
        )?;
        let apiserver = Server::start(
            &namespace.ns,
            dir.path(),
            "kube-apiserver",
            &apiserver_args(dir.path(), &config.serving()),
            config.die_with_thread,
        )?;
        let mut cp = ControlPlane {
            scheduler: None,
            controller_manager: None,
            apiserver,
            etcd,
            kubeconfig: PathBuf::new(),
            config,
            namespace,
            dir,
        };
        cp.kubeconfig = cp.write_kubeconfig("kubeconfig", ADMIN_TOKEN, Ipv4Addr::LOCALHOST)?;
        let took = cp.wait_ready()?;
        Ok((cp, took))
    }

    /// Polls `/readyz` until it answers `ok`; fails with the last answer
    /// and the servers' logs when it does not within [`READY_WITHIN`].
    fn wait_ready(&mut self) -> Result<Duration> {
        let start = Instant::now();
        loop {
            self.etcd.check_running()?;
            self.apiserver.check_running()?;
            let out = self.kubectl_raw("/readyz")?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(start.elapsed());
            }
            if start.elapsed() > READY_WITHIN {
                let logs = [&self.etcd, &self.apiserver]
                    .iter()
                    .map(|s| format!("{}:\n{}", s.name, s.log_tail()))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(ControlPlaneError::NotReady {
                    within: READY_WITHIN,
                    last: text(&out),
                    logs,
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Starts kube-controller-manager with every controller and node IPAM
    /// handing out /24s of `cluster_cidr`, as kubeadm's
    /// `--pod-network-cidr` sets it up.
    pub fn start_controller_manager(&mut self, cluster_cidr: &str) -> Result<()> {
        let args = controller_manager_args(
            self.dir.path(),
            &self.kubeconfig,
            &NodeIpam {
                cluster_cidr: cluster_cidr.into(),
                node_mask: 24,
                service_cidr: SERVICE_CIDR.into(),
            },
        );
        let server = Server::start(
            &self.namespace.ns,
            self.dir.path(),
            "kube-controller-manager",
            &args,
            self.config.die_with_thread,
        )?;
        self.controller_manager = Some(server);
        Ok(())
    }

    /// Starts kube-scheduler, which binds pods to nodes.
    pub fn start_scheduler(&mut self) -> Result<()> {
        let server = Server::start(
            &self.namespace.ns,
            self.dir.path(),
            "kube-scheduler",
            &scheduler_args(&self.kubeconfig),
            self.config.die_with_thread,
        )?;
        self.scheduler = Some(server);
        Ok(())
    }

    /// The namespace the servers listen in.
    pub fn ns(&self) -> &NetNs {
        &self.namespace.ns
    }

    /// That namespace's name (for `ip -n`).
    pub fn ns_name(&self) -> &str {
        &self.namespace.name
    }

    /// The admin's kubeconfig (server 127.0.0.1: from the namespace itself).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The control plane's directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The authority clients check the serving certificate against.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The admin's bearer token.
    pub fn admin_token(&self) -> &'static str {
        ADMIN_TOKEN
    }

    /// The PIDs of the servers now running: etcd, the apiserver and (if
    /// started) the controller manager.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.etcd.child.id(), self.apiserver.child.id()];
        pids.extend(self.controller_manager.as_ref().map(|s| s.child.id()));
        pids.extend(self.scheduler.as_ref().map(|s| s.child.id()));
        pids
    }

    /// The apiserver's PID.
    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver.child.id()
    }

    /// etcd's PID.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd.child.id()
    }

    /// A kubeconfig `name` (in the control plane's directory) for the
    /// apiserver at `host` with bearer `token`.
    pub fn write_kubeconfig(&self, name: &str, token: &str, host: Ipv4Addr) -> Result<PathBuf> {
        self.write_kubeconfig_as(name, &format!("token: {token}"), host)
    }

    /// A kubeconfig `name` for the apiserver at `host` whose user is
    /// `credentials` (the YAML of a kubeconfig `user`).
    fn write_kubeconfig_as(
        &self,
        name: &str,
        credentials: &str,
        host: Ipv4Addr,
    ) -> Result<PathBuf> {
        let kubeconfig = self.dir.path().join(name);
        let server = format!("https://{host}:{APISERVER_PORT}");
        let config = kubeconfig_text(&server, &self.ca_file(), credentials);
        fs::write(&kubeconfig, config).map_err(io("writing a kubeconfig"))?;
        Ok(kubeconfig)
    }

    /// A kubeconfig for the kubelet of node `node` at `host`: a client
    /// certificate for `system:node:<node>` in group `system:nodes`,
    /// signed by the cluster's authority, so the Node authorizer and
    /// NodeRestriction apply to it as to a real kubelet.
    pub fn node_kubeconfig(&self, node: &str, host: Ipv4Addr) -> Result<PathBuf> {
        let credentials = node_credentials(self.dir.path(), node)?;
        self.write_kubeconfig_as(&format!("kubeconfig-node-{node}"), &credentials, host)
    }

    /// `kubectl get --raw PATH` against the apiserver.
    pub fn kubectl_raw(&self, path: &str) -> Result<Output> {
        kubectl_raw(&self.namespace.ns, &self.kubeconfig, path)
    }

    /// Runs kubectl as the admin against the API server.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.namespace
            .ns
            .command(peer("kubectl")?)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--request-timeout=10s"])
            .args(args)
            .output()
            .map_err(io("running kubectl"))
    }

    /// [`ControlPlane::kubectl`] that must succeed; its output.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            return Err(ControlPlaneError::Failed {
                what: format!("kubectl {args:?}"),
                output: text(&out),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A kubeconfig acting as ServiceAccount `namespace/name` (a token
    /// from the TokenRequest API, valid for an hour).
    pub fn kubeconfig_of(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token =
            self.kubectl_ok(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
        self.write_kubeconfig(
            &format!("kubeconfig-{name}"),
            token.trim(),
            Ipv4Addr::LOCALHOST,
        )
    }

    /// Stops the apiserver (etcd keeps the cluster's state).
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop();
    }

    /// Starts the apiserver again and waits until it is ready.
    pub fn restart_apiserver(&mut self) -> Result<Duration> {
        self.apiserver = Server::start(
            &self.namespace.ns,
            self.dir.path(),
            "kube-apiserver",
            &apiserver_args(self.dir.path(), &self.config.serving()),
            self.config.die_with_thread,
        )?;
        self.wait_ready()
    }

    /// Stops etcd (its data stays), as an outage of the store.
    pub fn stop_etcd(&mut self) {
        self.etcd.stop();
    }

    /// Starts etcd again on its data.
    pub fn restart_etcd(&mut self) -> Result<()> {
        self.etcd = Server::start(
            &self.namespace.ns,
            self.dir.path(),
            "etcd",
            &etcd_args(self.dir.path(), self.config.bind),
            self.config.die_with_thread,
        )?;
        Ok(())
    }

    /// Fails with the server's log unless every server still runs.
    pub fn check_running(&mut self) -> Result<()> {
        for server in [&mut self.controller_manager, &mut self.scheduler]
            .into_iter()
            .flatten()
        {
            server.check_running()?;
        }
        self.etcd.check_running()?;
        self.apiserver.check_running()
    }
}
