//! Kubernetes' control plane for tests: [`weft_lab::control_plane`] (etcd
//! and kube-apiserver in a namespace of the test's own, removed with the
//! servers on drop, also when the test fails) with failures as panics, and
//! the helpers only the tests need.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weft_datapath::NetNs;
use weft_lab::control_plane::{self as lab, Config};

// Each suite compiles this module; only peers.rs uses these.
#[allow(unused_imports)]
pub use weft_lab::control_plane::{text, KUBERNETES_VERSION};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn peer(name: &str) -> PathBuf {
    lab::peer(name).unwrap_or_else(|e| panic!("{e}"))
}

pub fn kubectl_raw(ns: &NetNs, kubeconfig: &Path, path: &str) -> Output {
    lab::kubectl_raw(ns, kubeconfig, path).expect("running kubectl")
}

/// etcd and kube-apiserver, ready, in their own namespace.
pub struct ControlPlane {
    inner: lab::ControlPlane,
    pub kubeconfig: PathBuf,
}

impl ControlPlane {
    /// Starts both servers (in namespace `wtpeers-<pid>-<n>-cp`) and waits
    /// until the apiserver is ready.
    pub fn start() -> ControlPlane {
        Self::start_with(|_| {})
    }

    /// [`ControlPlane::start`] with the apiserver listening on every
    /// address of its namespace and its certificate valid for `address`
    /// too, for agents in other namespaces (over links the test adds).
    pub fn start_reachable_at(address: std::net::Ipv4Addr) -> ControlPlane {
        Self::start_with(|config| {
            config.bind = std::net::Ipv4Addr::UNSPECIFIED;
            config.serving_addresses.push(address);
        })
    }

    fn start_with(adjust: impl FnOnce(&mut Config)) -> ControlPlane {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut config = Config::new(format!("wtpeers-{}-{n}-cp", std::process::id()));
        adjust(&mut config);
        let (inner, took) = lab::ControlPlane::start(config)
            .unwrap_or_else(|e| panic!("starting the control plane: {e}"));
        eprintln!("kube-apiserver ready after {took:?}");
        let kubeconfig = inner.kubeconfig().to_path_buf();
        ControlPlane { inner, kubeconfig }
    }

    /// Starts kube-scheduler.
    pub fn start_scheduler(&mut self) {
        self.inner
            .start_scheduler()
            .unwrap_or_else(|e| panic!("starting kube-scheduler: {e}"));
    }

    /// A kubeconfig with node `node`'s kubelet certificate.
    pub fn node_kubeconfig(&self, node: &str) -> PathBuf {
        self.inner
            .node_kubeconfig(node, std::net::Ipv4Addr::LOCALHOST)
            .unwrap_or_else(|e| panic!("a kubeconfig for node {node}: {e}"))
    }

    /// The admin's kubeconfig for the apiserver at `host` (one of the
    /// addresses it serves), for processes in other namespaces.
    #[allow(dead_code)] // Only flannel_interop.rs uses it.
    pub fn admin_kubeconfig_at(&self, host: std::net::Ipv4Addr) -> PathBuf {
        let name = format!("admin-at-{host}.kubeconfig");
        self.inner
            .write_kubeconfig(&name, self.inner.admin_token(), host)
            .unwrap_or_else(|e| panic!("an admin kubeconfig for {host}: {e}"))
    }

    /// Starts kube-controller-manager with node IPAM handing out /24s of
    /// `cluster_cidr`.
    pub fn start_controller_manager(&mut self, cluster_cidr: &str) {
        self.inner
            .start_controller_manager(cluster_cidr)
            .unwrap_or_else(|e| panic!("starting kube-controller-manager: {e}"));
    }

    /// The namespace the servers listen in (on its loopback).
    pub fn ns(&self) -> &NetNs {
        self.inner.ns()
    }

    /// That namespace's name (for `ip -n`).
    pub fn ns_name(&self) -> &str {
        self.inner.ns_name()
    }

    /// `kubectl get --raw PATH` against the apiserver.
    pub fn kubectl_raw(&self, path: &str) -> Output {
        self.inner.kubectl_raw(path).expect("running kubectl")
    }

    /// Stops the apiserver (etcd keeps the cluster's state).
    pub fn stop_apiserver(&mut self) {
        self.inner.stop_apiserver();
    }

    /// Stops etcd (its data stays).
    #[allow(dead_code)] // Only etcd_source.rs uses it.
    pub fn stop_etcd(&mut self) {
        self.inner.stop_etcd();
    }

    /// Starts etcd again on its data.
    #[allow(dead_code)] // Only etcd_source.rs uses it.
    pub fn restart_etcd(&mut self) {
        self.inner
            .restart_etcd()
            .unwrap_or_else(|e| panic!("restarting etcd: {e}"));
    }

    /// Starts the apiserver again and waits until it is ready.
    pub fn restart_apiserver(&mut self) {
        self.inner
            .restart_apiserver()
            .unwrap_or_else(|e| panic!("restarting kube-apiserver: {e}"));
    }

    /// Runs kubectl as the admin against the API server.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.inner.kubectl(args).expect("running kubectl")
    }

    /// [`ControlPlane::kubectl`] that must succeed; its output.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.inner
            .kubectl_ok(args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A kubeconfig acting as ServiceAccount `namespace/name` (a token
    /// from the TokenRequest API, valid for an hour).
    pub fn kubeconfig_of(&self, namespace: &str, name: &str) -> PathBuf {
        self.inner
            .kubeconfig_of(namespace, name)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `work` with weft's Kubernetes source on the admin's
    /// kubeconfig, inside the control plane's namespace, to completion.
    pub fn with_cluster<T, F, Fut>(&self, work: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(weft_cluster::kubernetes::Kubernetes) -> Fut + Send,
        Fut: std::future::Future<Output = T>,
    {
        self.with_cluster_as(&self.kubeconfig, work)
    }

    /// [`ControlPlane::with_cluster`] with the credentials of `kubeconfig`.
    pub fn with_cluster_as<T, F, Fut>(&self, kubeconfig: &Path, work: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(weft_cluster::kubernetes::Kubernetes) -> Fut + Send,
        Fut: std::future::Future<Output = T>,
    {
        let kubeconfig = kubeconfig.to_path_buf();
        self.block_on_inside(|| async move {
            let cluster = weft_cluster::kubernetes::Kubernetes::from_kubeconfig(&kubeconfig)
                .await
                .expect("connecting to the API server");
            work(cluster).await
        })
    }

    /// Runs the future `work` makes to completion on a runtime of its own,
    /// inside the control plane's namespace.
    fn block_on_inside<T, F, Fut>(&self, work: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = T>,
    {
        self.ns()
            .run_in(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(work())
            })
            .expect("entering the control plane's namespace")
    }

    /// Runs `work` with a client of the control plane's etcd (plain
    /// etcd-client, for writing what flanneld or an operator would), inside
    /// the control plane's namespace, to completion.
    #[allow(dead_code)] // Only etcd_source.rs uses it.
    pub fn with_etcd<T, F, Fut>(&self, work: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Vec<String>) -> Fut + Send,
        Fut: std::future::Future<Output = T>,
    {
        self.block_on_inside(|| work(vec![lab::ETCD_CLIENT_URL.to_string()]))
    }

    /// The namespaces `deploy/weft.yaml` goes in: `weft-system` (a
    /// server-side dry run does not create it) and `kube-node-lease`,
    /// which the API server makes soon after it is ready.
    pub fn prepare_install(&self) {
        self.kubectl_ok(&["create", "namespace", "weft-system"]);
        self.await_lease_namespace();
    }

    /// Waits for `kube-node-lease`, which the API server makes soon after
    /// it is ready.
    pub fn await_lease_namespace(&self) {
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

    /// Fails the test with the servers' logs unless all still run.
    pub fn assert_running(&mut self) {
        self.inner.check_running().unwrap_or_else(|e| panic!("{e}"));
    }
}
