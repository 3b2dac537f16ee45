//! Where a lab lives: its namespaces' names and its files under
//! `/run/weft/labs/<lab>/`, plus the small state file that records the lab's
//! shape and which underlay addresses go to whom (nodes, the external client,
//! the LoadBalancer pool). Names are derived from the lab's name, so several
//! labs run side by side without touching each other.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

pub const LABS_DIR: &str = "/run/weft/labs";
/// The network every node's `eth0` sits on (RFC 2544 benchmarking space).
pub const DEFAULT_UNDERLAY: &str = "198.18.0.0/24";
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
/// Where Services' clusterIPs come from (Kubernetes' kubeadm default).
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/16";
/// Every node's pod subnet is a /24 of the pod CIDR (flannel's default
/// SubnetLen; node IPAM's mask in Kubernetes mode).
pub const SUBNET_LEN: u8 = 24;
/// Node addresses start this far above the underlay's network address.
const FIRST_NODE_OFFSET: u32 = 10;
/// The external client's address, this far above the underlay's network address.
const EXTERNAL_OFFSET: u32 = 2;
/// The control plane's address (Kubernetes mode), this far above it.
const CONTROL_PLANE_OFFSET: u32 = 3;
/// The size of the default LoadBalancer pool: the underlay's last 16 addresses.
const DEFAULT_LB_POOL_PREFIX: u8 = 28;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("lab name {0:?} is invalid: use 1-12 lowercase letters, digits and '-'")]
    BadName(String),
    #[error("node name {name:?} is invalid: {reason}")]
    BadNodeName { name: String, reason: String },
    #[error("{what} {name:?} is invalid: {reason}")]
    BadObjectName {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("lab {0} is being taken down (`weft lab down`); stopped")]
    GoingDown(String),
    #[error("locking {path}: {errno}")]
    Lock {
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("refusing to remove {0}: it is not inside the lab's directory")]
    Outside(PathBuf),
    #[error("no lab named {0:?} is running (see `weft lab status`)")]
    NoLab(String),
    #[error("cannot read or write lab state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("lab state {path} is damaged: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "the underlay {underlay} has no free address for another node (the external client and the \
         LoadBalancer pool {pool} are reserved); recreate the lab with a larger --underlay-cidr"
    )]
    UnderlayFull { underlay: Ipv4Net, pool: Ipv4Net },
}

/// One node of a lab as recorded in its state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The index of the node's port on the underlay bridge (`n<index>`).
    pub index: u32,
    pub agent_pid: Option<u32>,
    /// The node's kubelet process (Kubernetes mode only).
    #[serde(default)]
    pub kubelet_pid: Option<u32>,
    /// The node's kube-proxy (labs with `--proxy kube-proxy` only).
    #[serde(default)]
    pub kube_proxy_pid: Option<u32>,
    /// What connects the node to the others (`agent_pid` is its process).
    #[serde(default)]
    pub network: Network,
}

/// What runs a node's pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// `weft agent`, pods wired by weft-cni.
    #[default]
    Weft,
    /// The real flanneld, pods wired as flannel's CNI chain wires them
    /// (Kubernetes mode only): for mixed clusters and comparisons.
    Flannel,
}

/// Where the nodes keep their subnet leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SubnetStore {
    /// The cluster's state: the lab's store, or the Nodes of its API
    /// server (flanneld's `--kube-subnet-mgr`).
    #[default]
    Cluster,
    /// The control plane's etcd in flannel's layout (`/coreos.com/network`;
    /// Kubernetes mode only).
    Etcd,
}

/// What implements Services on the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proxy {
    /// weft's, in every agent.
    #[default]
    Weft,
    /// kube-proxy (Kubernetes mode only), for comparing the two.
    KubeProxy,
}

/// What holds a lab's cluster state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ControlPlane {
    /// The lab's own store; `weft lab` plays API server, controllers and
    /// kubelets.
    #[default]
    Embedded,
    /// Kubernetes' own control plane in the lab, reached from the host
    /// through a forwarder on 127.0.0.1:`host_port`.
    Kubernetes { host_port: u16 },
}

/// The lab's shape, persisted across `weft lab` invocations. Fields added
/// after the first release have serde defaults, so older labs still load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub backend: String,
    pub pod_cidr: String,
    pub underlay: Ipv4Net,
    pub nodes: Vec<NodeRecord>,
    /// Services' clusterIPs.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Net,
    /// LoadBalancer addresses, inside the underlay; absent in labs created
    /// before Services, which get [`default_lb_pool`].
    #[serde(default)]
    pub lb_pool: Option<Ipv4Net>,
    #[serde(default)]
    pub control_plane: ControlPlane,
    #[serde(default)]
    pub proxy: Proxy,
    #[serde(default)]
    pub subnet_store: SubnetStore,
}

fn default_service_cidr() -> Ipv4Net {
    DEFAULT_SERVICE_CIDR
        .parse()
        .expect("DEFAULT_SERVICE_CIDR is a valid network")
}

/// The LoadBalancer pool a lab gets without `--lb-cidr`: the underlay's last
/// 16 addresses (198.18.0.240/28 for the default underlay), or the whole
/// underlay if it is smaller than that.
pub fn default_lb_pool(underlay: Ipv4Net) -> Ipv4Net {
    let prefix = underlay.prefix_len().max(DEFAULT_LB_POOL_PREFIX);
    Ipv4Net::new(underlay.broadcast(), prefix)
        .map(|net| net.trunc())
        .unwrap_or(underlay)
}

impl LabState {
    /// The next free underlay address and bridge-port index. A node's
    /// address is `.10 + index` (so a removed node's address is not reused
    /// at once), or the next one up that is free: never the external
    /// client, the LoadBalancer pool or the underlay's broadcast address.
    pub fn next_slot(&self) -> Result<(u32, Ipv4Addr), LayoutError> {
        let index = self
            .nodes
            .iter()
            .map(|n| n.index)
            .max()
            .map_or(1, |i| i + 1);
        let base = u32::from(self.underlay.network());
        let pool = self.lb_pool();
        let taken: Vec<Ipv4Addr> = self.nodes.iter().map(|n| n.ip).collect();
        (base.saturating_add(FIRST_NODE_OFFSET + index)..u32::from(self.underlay.broadcast()))
            .map(Ipv4Addr::from)
            .find(|ip| {
                !pool.contains(ip)
                    && *ip != self.external_ip()
                    && *ip != self.control_plane_ip()
                    && !taken.contains(ip)
            })
            .map(|ip| (index, ip))
            .ok_or(LayoutError::UnderlayFull {
                underlay: self.underlay,
                pool,
            })
    }

    /// Where node addresses start (`.11`); the LoadBalancer pool must stay
    /// clear of it.
    pub fn first_node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.underlay.network()).saturating_add(FIRST_NODE_OFFSET + 1))
    }

    /// The external client's address on the underlay (`.2`).
    pub fn external_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.underlay.network()).saturating_add(EXTERNAL_OFFSET))
    }

    /// The control plane's address on the underlay (`.3`; Kubernetes mode).
    pub fn control_plane_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.underlay.network()).saturating_add(CONTROL_PLANE_OFFSET))
    }

    pub fn lb_pool(&self) -> Ipv4Net {
        self.lb_pool
            .unwrap_or_else(|| default_lb_pool(self.underlay))
    }

    /// Underlay addresses the LoadBalancer allocator must never hand out:
    /// the network and broadcast addresses, the external client, the nodes.
    pub fn lb_reserved(&self) -> Vec<Ipv4Addr> {
        let mut reserved = vec![
            self.underlay.network(),
            self.underlay.broadcast(),
            self.external_ip(),
            self.control_plane_ip(),
        ];
        reserved.extend(self.nodes.iter().map(|n| n.ip));
        reserved
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// The external client's namespace suffix; no node may be called this.
pub const EXTERNAL: &str = "external";
/// The control plane's namespace suffix (Kubernetes mode); nor this.
pub const CONTROL_PLANE: &str = "control-plane";

/// The longest node name: it becomes part of a namespace name
/// (`wl-<lab>-<node>`), which the kernel keeps under 255 bytes.
const NODE_NAME_MAX: usize = 63;

/// Whether `node` would name a namespace the lab uses for something else.
pub fn is_reserved_node_name(node: &str) -> bool {
    node == EXTERNAL || node == CONTROL_PLANE || node == "underlay" || node.starts_with("pod-")
}

/// A node name the lab accepts: a Kubernetes node name (a DNS-1123
/// subdomain) of at most 63 characters that names none of the lab's own
/// namespaces. It becomes a namespace name and a directory name.
pub fn check_node_name(node: &str) -> Result<(), LayoutError> {
    let bad = |reason: String| LayoutError::BadNodeName {
        name: node.into(),
        reason,
    };
    weft_validation::names::dns1123_subdomain(node).map_err(bad)?;
    if node.len() > NODE_NAME_MAX {
        return Err(bad(format!(
            "the lab allows at most {NODE_NAME_MAX} characters"
        )));
    }
    if is_reserved_node_name(node) {
        return Err(bad(
            "it names one of the lab's own namespaces (external, control-plane, underlay, pod-*); call the node \
             something else"
                .into(),
        ));
    }
    Ok(())
}

/// Names and paths of one lab.
#[derive(Debug, Clone)]
pub struct Layout {
    pub lab: String,
    pub root: PathBuf,
}

impl Layout {
    pub fn new(lab: &str) -> Result<Self, LayoutError> {
        let ok = !lab.is_empty()
            && lab.len() <= 12
            && lab
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(LayoutError::BadName(lab.into()));
        }
        Ok(Self {
            lab: lab.into(),
            root: Path::new(LABS_DIR).join(lab),
        })
    }

    pub fn underlay_ns(&self) -> String {
        format!("wl-{}-{UNDERLAY}", self.lab)
    }
    pub fn node_ns(&self, node: &str) -> String {
        format!("wl-{}-{node}", self.lab)
    }
    /// The client outside the cluster: on the underlay, not a node.
    pub fn external_ns(&self) -> String {
        format!("wl-{}-{EXTERNAL}", self.lab)
    }
    /// Kubernetes' control plane (Kubernetes mode): on the underlay, not a node.
    pub fn control_plane_ns(&self) -> String {
        format!("wl-{}-{CONTROL_PLANE}", self.lab)
    }
    /// The control plane's keys, certificates, kubeconfigs, etcd's data
    /// and logs.
    pub fn control_plane_dir(&self) -> PathBuf {
        self.root.join(CONTROL_PLANE)
    }
    pub fn pod_ns(&self, uid: &str) -> String {
        format!("wl-{}-pod-{}", self.lab, &uid[..uid.len().min(12)])
    }
    /// Every namespace of this lab starts with this.
    pub fn ns_prefix(&self) -> String {
        format!("wl-{}-", self.lab)
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store.db")
    }
    pub fn net_conf(&self) -> PathBuf {
        self.root.join("net-conf.json")
    }
    /// A node's files. Callers pass names that passed [`check_node_name`];
    /// [`Layout::remove`] checks again before anything is deleted.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    /// A pod's files (logs, the CNI result), `pods/<namespace>_<name>`:
    /// only for names that pass Kubernetes' rules, which admit neither `/`
    /// nor `_`, so the path is one component and unique.
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> Result<PathBuf, LayoutError> {
        let bad = |what, name: &str, reason| LayoutError::BadObjectName {
            what,
            name: name.into(),
            reason,
        };
        weft_validation::names::dns1123_label(namespace)
            .map_err(|r| bad("namespace", namespace, r))?;
        weft_validation::names::dns1123_subdomain(pod).map_err(|r| bad("pod name", pod, r))?;
        Ok(self.root.join("pods").join(format!("{namespace}_{pod}")))
    }
    /// Removes `path` and everything below it, only if it lies strictly
    /// inside this lab's directory (checked on the resolved path, so no
    /// `..` or symbolic link leads out). A path that does not exist is fine.
    pub fn remove(&self, path: &Path) -> Result<(), LayoutError> {
        let io = |source| LayoutError::Io {
            path: path.to_path_buf(),
            source,
        };
        let resolved = match path.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let root = self.root.canonicalize().map_err(io)?;
        if resolved == root || !resolved.starts_with(&root) {
            return Err(LayoutError::Outside(path.to_path_buf()));
        }
        std::fs::remove_dir_all(&resolved).map_err(io)
    }
    /// The file behind [`Layout::lock`].
    pub fn controller_lock(&self) -> PathBuf {
        self.root.join("controller.lock")
    }
    /// Present while `weft lab down` runs: commands that find it stop.
    pub fn going_down(&self) -> PathBuf {
        self.root.join("going-down")
    }
    /// The lab's lock, held while Services are admitted, EndpointSlices
    /// synced, pods started or deleted and pod status written, so two
    /// `weft lab` processes never decide on the same state at once;
    /// released when dropped. Never take it twice in one thread: flock
    /// would wait for itself. Fails once the lab is being taken down, so
    /// nothing done under it outlives `weft lab down`.
    pub fn lock(&self) -> Result<Flock<File>, LayoutError> {
        let lock = self.lock_file(None).map_err(|e| match e {
            // `down` removed the whole directory meanwhile.
            LayoutError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                LayoutError::GoingDown(self.lab.clone())
            }
            e => e,
        })?;
        if self.going_down().exists() || !self.state_file().exists() {
            return Err(LayoutError::GoingDown(self.lab.clone()));
        }
        Ok(lock)
    }

    /// The lab's lock for `weft lab down`, which must not wait forever:
    /// `Err` after `limit`.
    pub fn lock_within(&self, limit: Duration) -> Result<Flock<File>, LayoutError> {
        self.lock_file(Some(limit))
    }

    fn lock_file(&self, limit: Option<Duration>) -> Result<Flock<File>, LayoutError> {
        let path = self.controller_lock();
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LayoutError::Io {
                path: path.clone(),
                source,
            })?;
        let deadline = limit.map(|l| Instant::now() + l);
        let arg = match deadline {
            None => FlockArg::LockExclusive,
            Some(_) => FlockArg::LockExclusiveNonblock,
        };
        loop {
            match Flock::lock(file, arg) {
                Ok(lock) => return Ok(lock),
                Err((f, Errno::EWOULDBLOCK)) if deadline.is_some_and(|d| Instant::now() < d) => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((_, errno)) => return Err(LayoutError::Lock { path, errno }),
            }
        }
    }

    fn state_file(&self) -> PathBuf {
        self.root.join("lab.json")
    }

    pub fn load(&self) -> Result<LabState, LayoutError> {
        let path = self.state_file();
        let text = std::fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LayoutError::NoLab(self.lab.clone()),
            _ => LayoutError::Io {
                path: path.clone(),
                source,
            },
        })?;
        serde_json::from_str(&text).map_err(|source| LayoutError::Json { path, source })
    }

    pub fn save(&self, state: &LabState) -> Result<(), LayoutError> {
        let path = self.state_file();
        let io = |source| LayoutError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.root).map_err(io)?;
        let text = serde_json::to_string_pretty(state).map_err(|source| LayoutError::Json {
            path: path.clone(),
            source,
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// Names of the labs that have a state directory.
pub fn labs() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(LABS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The underlay namespace's name after the lab's prefix.
const UNDERLAY: &str = "underlay";

/// The lab names found in `dirs`, underlay namespace names and process
/// owner tags (`<lab>/…`): every lab anything is left of. Only names a lab
/// can have.
pub fn labs_left(
    dirs: Vec<String>,
    namespaces: &[String],
    owners: &[String],
) -> std::collections::BTreeSet<String> {
    let from_namespaces = namespaces.iter().filter_map(|ns| {
        ns.strip_prefix("wl-")?
            .strip_suffix(&format!("-{UNDERLAY}"))
            .map(str::to_owned)
    });
    let from_owners = owners
        .iter()
        .filter_map(|owner| owner.split_once('/').map(|(lab, _)| lab.to_owned()));
    dirs.into_iter()
        .chain(from_namespaces)
        .chain(from_owners)
        .filter(|lab| Layout::new(lab).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labs_are_found_by_directory_namespace_or_process() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let found = labs_left(
            strings(&["a"]),
            &strings(&[
                "wl-b-underlay",
                "wl-b-node-1",
                "wl-c-d-underlay",
                "other",
                "wl-Bad_-underlay",
            ]),
            &strings(&["e/agent/node-1", "a/pod/x", "no-slash", "../x/y"]),
        );
        assert_eq!(found, ["a", "b", "c-d", "e"].map(String::from).into());
        assert_eq!(Layout::new("c-d").unwrap().underlay_ns(), "wl-c-d-underlay");
    }

    #[test]
    fn names_are_checked_and_derived() {
        assert!(Layout::new("Bad_Name").is_err());
        assert!(Layout::new("waytoolongname").is_err());
        let l = Layout::new("demo").unwrap();
        assert_eq!(l.node_ns("node-1"), "wl-demo-node-1");
        assert!(l.pod_ns("0123456789abcdef").starts_with(&l.ns_prefix()));
    }

    fn state(underlay: &str) -> LabState {
        LabState {
            name: "x".into(),
            backend: "vxlan".into(),
            pod_cidr: DEFAULT_POD_CIDR.into(),
            underlay: underlay.parse().unwrap(),
            nodes: vec![],
            service_cidr: DEFAULT_SERVICE_CIDR.parse().unwrap(),
            lb_pool: None,
            control_plane: ControlPlane::Embedded,
            proxy: Proxy::Weft,
            subnet_store: SubnetStore::Cluster,
        }
    }

    fn push_node(s: &mut LabState) {
        let (index, ip) = s.next_slot().unwrap();
        s.nodes.push(NodeRecord {
            name: format!("n{index}"),
            ip,
            index,
            agent_pid: None,
            kubelet_pid: None,
            kube_proxy_pid: None,
            network: Network::Weft,
        });
    }

    #[test]
    fn slots_follow_the_underlay() {
        let mut s = state(DEFAULT_UNDERLAY);
        assert_eq!(s.next_slot().unwrap(), (1, "198.18.0.11".parse().unwrap()));
        push_node(&mut s);
        assert_eq!(s.next_slot().unwrap(), (2, "198.18.0.12".parse().unwrap()));
        assert_eq!(s.external_ip(), "198.18.0.2".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn slots_never_reach_the_external_client_the_pool_or_broadcast() {
        // 198.18.0.0/27: nodes from .11, pool .16/28 ... .31 (default: the last 16).
        let mut s = state("198.18.0.0/27");
        assert_eq!(s.lb_pool(), "198.18.0.16/28".parse().unwrap());
        for _ in 0..5 {
            push_node(&mut s);
        }
        assert_eq!(s.nodes[4].ip, "198.18.0.15".parse::<Ipv4Addr>().unwrap());
        assert!(matches!(
            s.next_slot(),
            Err(LayoutError::UnderlayFull { .. })
        ));
        let mut s = state(DEFAULT_UNDERLAY);
        s.lb_pool = Some("198.18.0.12/30".parse().unwrap());
        push_node(&mut s);
        push_node(&mut s);
        assert_eq!(s.nodes[1].ip, "198.18.0.16".parse::<Ipv4Addr>().unwrap());
        assert!(s.nodes.iter().all(|n| n.ip != s.external_ip()));
    }

    #[test]
    fn labs_from_before_services_still_load() {
        let old = r#"{"name":"x","backend":"vxlan","pod_cidr":"10.244.0.0/16","underlay":"198.18.0.0/24","nodes":[]}"#;
        let s: LabState = serde_json::from_str(old).unwrap();
        assert_eq!(s.service_cidr, DEFAULT_SERVICE_CIDR.parse().unwrap());
        assert_eq!(s.lb_pool(), "198.18.0.240/28".parse().unwrap());
        assert!(s.lb_reserved().contains(&"198.18.0.255".parse().unwrap()));
    }

    #[test]
    fn node_names_cannot_take_the_lab_s_own_namespaces() {
        for name in ["external", "underlay", "pod-1"] {
            assert!(is_reserved_node_name(name), "{name}");
            assert!(check_node_name(name).is_err(), "{name}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "Node", &"n".repeat(64)] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_node_name("node-1.zone-a").is_ok());
        assert!(!is_reserved_node_name("node-1"));
        assert_eq!(
            Layout::new("demo").unwrap().external_ns(),
            "wl-demo-external"
        );
    }

    #[test]
    fn pod_paths_come_only_from_valid_names() {
        let l = Layout::new("demo").unwrap();
        assert!(l.pod_dir("default", "/../../../../../../tmp/x").is_err());
        assert!(l.pod_dir("..", "x").is_err());
        assert!(l.pod_dir("default", "..").is_err());
        assert!(l.pod_dir("default", "").is_err());
        assert_eq!(
            l.pod_dir("default", "web-0").unwrap(),
            Path::new(LABS_DIR).join("demo/pods/default_web-0")
        );
    }

    #[test]
    fn removal_stays_inside_the_lab() {
        let base = tempfile::tempdir().unwrap();
        let l = Layout {
            lab: "t".into(),
            root: base.path().join("lab"),
        };
        let outside = base.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(l.root.join("nodes/n1")).unwrap();
        std::os::unix::fs::symlink(&outside, l.root.join("nodes/link")).unwrap();
        for escape in [
            l.root.clone(),
            l.root.join("nodes/.."),
            l.root.join("../outside"),
            l.root.join("nodes/link"),
        ] {
            assert!(
                matches!(l.remove(&escape), Err(LayoutError::Outside(_))),
                "{escape:?}"
            );
        }
        assert!(outside.is_dir() && l.root.is_dir());
        l.remove(&l.root.join("nodes/n1")).unwrap();
        assert!(!l.root.join("nodes/n1").exists());
        l.remove(&l.root.join("nodes/gone")).unwrap();
    }

    #[test]
    fn the_lock_of_a_removed_lab_says_it_is_going_down() {
        let base = tempfile::tempdir().unwrap();
        let l = Layout {
            lab: "t".into(),
            root: base.path().join("lab"),
        };
        assert!(matches!(l.lock(), Err(LayoutError::GoingDown(_))));
        std::fs::create_dir_all(&l.root).unwrap();
        assert!(
            matches!(l.lock(), Err(LayoutError::GoingDown(_))),
            "no lab.json"
        );
        std::fs::write(l.state_file(), "{}").unwrap();
        let held = l.lock().unwrap();
        assert!(matches!(
            l.lock_within(Duration::from_millis(50)),
            Err(LayoutError::Lock { .. })
        ));
        drop(held);
        std::fs::write(l.going_down(), "").unwrap();
        assert!(matches!(l.lock(), Err(LayoutError::GoingDown(_))));
    }

    proptest::proptest! {
        /// Whatever a manifest names a pod, its directory is a direct child
        /// of `pods/`, or there is none.
        #[test]
        fn pod_dirs_never_leave_pods(namespace in "\\PC{0,70}", name in "[a-z0-9./_-]{0,80}") {
            let l = Layout::new("demo").unwrap();
            if let Ok(dir) = l.pod_dir(&namespace, &name) {
                let pods = l.root.join("pods");
                proptest::prop_assert_eq!(dir.parent(), Some(pods.as_path()));
                proptest::prop_assert!(dir.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir)));
            }
        }
    }
}
