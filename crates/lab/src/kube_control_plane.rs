//! A lab's Kubernetes control plane (`weft lab up --control-plane
//! kubernetes`): etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler from the peers cache, in the lab's `control-plane`
//! namespace on the underlay (at `.3`), started detached and tagged with
//! the lab as owner like every lab process, so `weft lab down` ends them
//! and nothing else. The host reaches the API server only through a
//! lab-owned forwarder on a loopback port; no route leads from the host
//! into the lab.
//!
//! Credentials, as kubeadm sets them up: a CA weft generates; the
//! apiserver's serving certificate for 127.0.0.1, the control plane's
//! underlay address and the `kubernetes` Service's clusterIP; a random
//! admin token (`system:masters`) for the lab's own commands and kubectl;
//! a client certificate per node for its kubelet (`system:node:<name>`);
//! a ServiceAccount token of `weft-system/weft` for the agents.
//!
//! Once the API server is ready, the CRDs a cluster running weft has
//! (ClusterNetworkPolicy's, from the peers cache) are installed
//! ([`install_crds`]).
//!
//! It owns those processes and files; the lab's topology (namespaces of
//! nodes, the underlay) is [`crate::ops`]'s.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use weft_datapath::{netns, NetNs};

use crate::control_plane::{self as peers, NodeIpam, Serving, APISERVER_PORT};
use crate::layout::{LabState, Layout, SubnetStore};
use crate::{procs, underlay};

/// The control plane's port on the underlay bridge.
const UNDERLAY_PORT: &str = "cp";
/// The components, in the order they start.
const COMPONENTS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];
/// The agents' ServiceAccount in `deploy/weft.yaml`.
const AGENT_ACCOUNT: (&str, &str) = ("weft-system", "weft");
/// How long the agents' token lasts: as long as any lab.
const AGENT_TOKEN_SECONDS: i64 = 366 * 24 * 3600;
/// The CRDs installed at `up` (files in the peers cache).
const CRDS: [&str; 1] = [peers::CLUSTER_NETWORK_POLICY_CRD];
/// Bounds the wait for a CRD's kind to be served (well under a second on
/// an idle API server).
const CRD_ESTABLISHED_WITHIN: Duration = Duration::from_secs(30);
/// The field manager of the lab's writes.
const MANAGER: &str = "weft-lab";

fn owner(layout: &Layout, component: &str) -> String {
    format!("{}/control-plane/{component}", layout.lab)
}

/// The admin's kubeconfig for the host (through the forwarder).
pub fn admin_kubeconfig(layout: &Layout) -> PathBuf {
    layout.control_plane_dir().join("admin.kubeconfig")
}

/// The admin's kubeconfig inside the control plane's namespace.
fn local_kubeconfig(layout: &Layout) -> PathBuf {
    layout.control_plane_dir().join("local.kubeconfig")
}

/// The agents' kubeconfig ([`write_agent_kubeconfig`]).
pub fn agent_kubeconfig(layout: &Layout) -> PathBuf {
    layout.control_plane_dir().join("agent.kubeconfig")
}

/// The admin's kubeconfig inside the lab's namespaces (dialling the API
/// server over the underlay), for peers that need more than weft's
/// ServiceAccount may do: flanneld patches its Node's annotations.
pub fn admin_kubeconfig_in_lab(layout: &Layout, state: &LabState) -> Result<PathBuf> {
    let dir = layout.control_plane_dir();
    let path = dir.join("admin-in-lab.kubeconfig");
    if !path.exists() {
        let tokens = std::fs::read_to_string(dir.join("tokens.csv"))?;
        let token = tokens
            .split(',')
            .next()
            .filter(|t| !t.is_empty())
            .context("the lab's tokens.csv holds no admin token")?;
        std::fs::write(
            &path,
            peers::kubeconfig_text(
                &server_in_lab(state),
                &dir.join("ca.crt"),
                &format!("token: {token}"),
            ),
        )?;
    }
    Ok(path)
}

/// The address a lab namespace dials the API server at.
fn server_in_lab(state: &LabState) -> String {
    format!("https://{}:{APISERVER_PORT}", state.control_plane_ip())
}

/// Creates the control plane's namespace on the underlay, writes the keys
/// and kubeconfigs, and starts the four components and the host's
/// forwarder; returns the forwarder's port. Does not wait: see
/// [`wait_ready`].
pub fn start(layout: &Layout, state: &LabState, weft: &Path) -> Result<u16> {
    for name in COMPONENTS.iter().chain(&["kubectl"]) {
        peers::peer(name)?;
    }
    for file in CRDS {
        peers::peer_crd(file)?;
    }
    let ns = attach(layout, state)?;
    let dir = layout.control_plane_dir();
    std::fs::create_dir_all(&dir)?;
    let kubernetes_service = Ipv4Addr::from(u32::from(state.service_cidr.network()) + 1);
    peers::generate_keys(&dir, &[state.control_plane_ip(), kubernetes_service])?;
    let token = crate::objects::random_uid();
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{token},weft-admin,weft-admin,system:masters\n"),
    )?;
    let ca = dir.join("ca.crt");
    let admin = format!("token: {token}");
    let local = format!("https://127.0.0.1:{APISERVER_PORT}");
    std::fs::write(
        local_kubeconfig(layout),
        peers::kubeconfig_text(&local, &ca, &admin),
    )?;
    let host_port = free_loopback_port()?;
    let host = format!("https://127.0.0.1:{host_port}");
    std::fs::write(
        admin_kubeconfig(layout),
        peers::kubeconfig_text(&host, &ca, &admin),
    )?;
    let serving = Serving {
        bind: Ipv4Addr::UNSPECIFIED,
        advertise: state.control_plane_ip(),
        service_cidr: state.service_cidr.to_string(),
    };
    let pod_cidr = state.pod_cidr.clone();
    let ipam = NodeIpam {
        cluster_cidr: pod_cidr,
        node_mask: crate::layout::SUBNET_LEN,
        service_cidr: state.service_cidr.to_string(),
    };
    let local = local_kubeconfig(layout);
    let args = [
        // flanneld and weft's agents reach etcd over the underlay when
        // it holds the subnet leases.
        peers::etcd_args(
            &dir,
            match state.subnet_store {
                SubnetStore::Etcd => std::net::Ipv4Addr::UNSPECIFIED,
                SubnetStore::Cluster => std::net::Ipv4Addr::LOCALHOST,
            },
        ),
        peers::apiserver_args(&dir, &serving),
        peers::controller_manager_args(&dir, &local, &ipam),
        peers::scheduler_args(&local),
    ];
    for (name, args) in COMPONENTS.iter().zip(args) {
        procs::spawn(
            Some(&ns),
            &peers::peer(name)?,
            &args,
            &owner(layout, name),
            &dir.join(format!("{name}.log")),
        )
        .with_context(|| format!("starting {name}"))?;
    }
    let forward: Vec<String> = [
        "lab".to_string(),
        "forward".into(),
        "--netns".into(),
        layout.control_plane_ns(),
        "--listen".into(),
        format!("127.0.0.1:{host_port}"),
        "--to".into(),
        format!("{}:{APISERVER_PORT}", state.control_plane_ip()),
    ]
    .into();
    procs::spawn(
        None,
        weft,
        &forward,
        &owner(layout, "forward"),
        &dir.join("forward.log"),
    )
    .context("starting the forwarder to the API server")?;
    Ok(host_port)
}

/// The control plane's namespace, attached to the underlay at `.3`.
fn attach(layout: &Layout, state: &LabState) -> Result<NetNs> {
    let name = layout.control_plane_ns();
    let ns = netns::create_named(&name)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let under = NetNs::open(netns::named_path(&layout.underlay_ns()))?;
    rt.block_on(underlay::attach(
        &under,
        &ns,
        UNDERLAY_PORT,
        state.control_plane_ip(),
        state.underlay,
    ))
    .context("attaching the control plane to the underlay")?;
    Ok(ns)
}

/// A port nothing listens on now, on the host's loopback.
fn free_loopback_port() -> Result<u16> {
    let probe = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context("finding a free port on 127.0.0.1 for the lab's API server")?;
    Ok(probe.local_addr()?.port())
}

/// A client acting as the lab's admin, through the forwarder.
pub async fn admin_client(layout: &Layout) -> Result<Client> {
    client_of(&admin_kubeconfig(layout)).await
}

pub async fn client_of(path: &Path) -> Result<Client> {
    let file = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .with_context(|| format!("the kubeconfig {}", path.display()))?;
    Client::try_from(config).context("creating the API client")
}

/// Waits until the API server answers `/readyz` with `ok` through the
/// forwarder, failing early with a component's log if one exits.
pub async fn wait_ready(layout: &Layout, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    let client = admin_client(layout).await?;
    loop {
        let request = http::Request::get("/readyz").body(Vec::new())?;
        let last = match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(started.elapsed()),
            Ok(body) => body,
            Err(e) => e.to_string(),
        };
        for name in COMPONENTS {
            if procs::owned_by(&owner(layout, name)).is_empty() {
                bail!("{name} exited:\n{}", log_tail(layout, name));
            }
        }
        if started.elapsed() > within {
            bail!(
                "the API server was not ready within {within:?}; last /readyz: {last}\n{}",
                log_tail(layout, "kube-apiserver")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Installs [`CRDS`] through `client` (an admin's; server-side apply, so
/// it may be done again) and waits until the API server serves their
/// kinds (condition `Established`), so the agents find them at once.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in CRDS {
        let path = peers::peer_crd(file)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut crd: CustomResourceDefinition = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not a CustomResourceDefinition", path.display()))?;
        // The generated file carries an empty status; it is the server's.
        crd.status = None;
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("installing CRD {name} from {}", path.display()))?;
        let established = await_condition(api.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(CRD_ESTABLISHED_WITHIN, established).await {
            Ok(done) => {
                done.with_context(|| format!("waiting for CRD {name} to be established"))?;
            }
            Err(_) => {
                let conditions = api
                    .get(&name)
                    .await
                    .ok()
                    .and_then(|crd| crd.status?.conditions)
                    .unwrap_or_default()
                    .iter()
                    .map(|c| {
                        format!(
                            "{}={} ({})",
                            c.type_,
                            c.status,
                            c.message.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>();
                bail!(
                    "CRD {name} was not established within {CRD_ESTABLISHED_WITHIN:?}; its conditions: {}",
                    conditions.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// The last lines of a component's log.
fn log_tail(layout: &Layout, name: &str) -> String {
    let path = layout.control_plane_dir().join(format!("{name}.log"));
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A kubeconfig for the kubelet of `node`, with its own client
/// certificate, dialling the API server over the underlay.
pub fn node_kubeconfig(layout: &Layout, state: &LabState, node: &str) -> Result<PathBuf> {
    let dir = layout.control_plane_dir();
    let credentials = peers::node_credentials(&dir, node)?;
    let path = dir.join(format!("node-{node}.kubeconfig"));
    std::fs::write(
        &path,
        peers::kubeconfig_text(&server_in_lab(state), &dir.join("ca.crt"), &credentials),
    )?;
    Ok(path)
}

/// A kubeconfig for kube-proxy (user `system:kube-proxy`, which
/// Kubernetes' default RBAC binds to `system:node-proxier`), dialling the
/// API server over the underlay; issued once, for every node.
pub fn kube_proxy_kubeconfig(layout: &Layout, state: &LabState) -> Result<PathBuf> {
    let dir = layout.control_plane_dir();
    let path = dir.join("kube-proxy.kubeconfig");
    if !path.exists() {
        let credentials = peers::client_credentials(&dir, "kube-proxy", "/CN=system:kube-proxy")?;
        std::fs::write(
            &path,
            peers::kubeconfig_text(&server_in_lab(state), &dir.join("ca.crt"), &credentials),
        )?;
    }
    Ok(path)
}

/// Has the TokenRequest API issue a token of the agents' ServiceAccount
/// (from `deploy/weft.yaml`, applied before) and writes the agents'
/// kubeconfig with it, dialling the API server over the underlay.
pub async fn write_agent_kubeconfig(
    client: &Client,
    layout: &Layout,
    state: &LabState,
) -> Result<()> {
    let (namespace, name) = AGENT_ACCOUNT;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(AGENT_TOKEN_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token of ServiceAccount {namespace}/{name}"))?;
    let token = issued
        .status
        .and_then(|s| s.token)
        .context("the TokenRequest came back without a token")?;
    let dir = layout.control_plane_dir();
    std::fs::write(
        agent_kubeconfig(layout),
        peers::kubeconfig_text(
            &server_in_lab(state),
            &dir.join("ca.crt"),
            &format!("token: {token}"),
        ),
    )?;
    Ok(())
}
